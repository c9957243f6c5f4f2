import torch, time
import torch.nn.functional as F
torch.manual_seed(0)
H, KV, D, CAP = 9, 3, 64, 512
def bench(f, n=400):
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n * 1e6
with torch.inference_mode():
 for R in (1, 8):
  for L in (150, 350):
   for W in (4, 12, 32):
    K = torch.randn(R, KV, CAP, D); V = torch.randn(R, KV, CAP, D)
    k, v = K[:, :, :L], V[:, :, :L]
    blk = torch.randn(R, W, H, D)
    mask = torch.rand(R, 1, W, L) > 0.1
    mrep = mask.repeat(1, 1, 3, 1)
    def gqa(): return F.scaled_dot_product_attention(blk.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=True)
    def packed(): return F.scaled_dot_product_attention(blk.transpose(1, 2).reshape(R, KV, 3 * W, D), k, v, attn_mask=mrep).view(R, H, W, D)
    assert torch.allclose(gqa(), packed(), atol=1e-5)
    res = {"gqa": [], "packed": []}
    for rep in range(3):
        res["gqa"].append(bench(gqa)); res["packed"].append(bench(packed))
    print(R, L, W, {n: f"{min(v):.0f}" for n, v in res.items()}, flush=True)
