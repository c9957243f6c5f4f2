"""Training drafters on this machine (issue 17): ``restdecode train-drafter``."""
