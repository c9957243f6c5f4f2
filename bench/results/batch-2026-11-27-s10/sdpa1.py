import torch, time
import torch.nn.functional as F
torch.manual_seed(0)
R, H, KV, D, CAP = 8, 9, 3, 64, 512
def bench(f, n=2000):
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n * 1e6
for L in (100, 200, 300):
    K = torch.randn(R, KV, CAP, D); V = torch.randn(R, KV, CAP, D)
    k, v = K[:, :, :L], V[:, :, :L]
    kc, vc = k.contiguous(), v.contiguous()
    q = torch.randn(R, H, 1, D)
    mask = torch.rand(R, 1, 1, L) > 0.1
    fs = {"ours": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
          "packed": lambda: F.scaled_dot_product_attention(q.view(R, KV, 3, D), k, v, attn_mask=mask),
          "packed contig": lambda: F.scaled_dot_product_attention(q.view(R, KV, 3, D), kc, vc, attn_mask=mask),
          "gqa contig": lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)}
    res = {n: [] for n in fs}
    for rep in range(3):
        for n, f in fs.items(): res[n].append(bench(f))
    print(L, {n: f"{min(v):.0f}-{max(v):.0f}" for n, v in res.items()})
