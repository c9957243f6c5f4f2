import sys
sys.argv = ["x", "--batch-size", "16", "--limit", "16", "--rounds", "4", "--out", "/tmp/diag/out-closed"]
sys.path.insert(0, "/work/main/bench")
from restdecode.drafting.planner import BatchGates, DraftingGate
class Closed(DraftingGate):
    def should_draft(self): return False
closed = Closed()
orig = BatchGates.for_rows
BatchGates.for_rows = lambda self, rows: closed if rows > 8 else orig(self, rows)
import batch_paired
batch_paired.main()
