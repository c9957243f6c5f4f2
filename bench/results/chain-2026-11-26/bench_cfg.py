"""The bench with other ChainDrafter defaults: CHAIN_MIN_P, CHAIN_DEPTHS, CHAIN_BEAM from the environment."""
import os, sys
from restdecode.drafting import chain as chain_module
original = chain_module.ChainDrafter.__init__
def patched(self, chain, **kw):
    kw.setdefault("min_probability", float(os.environ.get("CHAIN_MIN_P", "0.02")))
    if "CHAIN_DEPTHS" in os.environ: kw.setdefault("depths", int(os.environ["CHAIN_DEPTHS"]))
    kw.setdefault("beam", int(os.environ.get("CHAIN_BEAM", "4")))
    original(self, chain, **kw)
chain_module.ChainDrafter.__init__ = patched
from restdecode.cli import main
sys.exit(main(sys.argv[1:]))
