"""The bench with the chain merged the old way (normalised to its weight), for comparison."""
import sys
from restdecode.drafting.chain import ChainDrafter
ChainDrafter.weighs_probabilities = False
from restdecode.cli import main
sys.exit(main(sys.argv[1:]))
