import time, torch, torch.nn.functional as F
torch.manual_seed(0)
for (k, n) in ((576, 1536), (1536, 576), (576, 576), (576, 49152)):
    w = torch.randn(n, k)
    for rnd in range(2):
        res = {}
        for shape in ((1, 8, k), (8, 1, k), (8, k)):
            x = torch.randn(*shape)
            for _ in range(20): F.linear(x, w)
            t = time.perf_counter()
            for _ in range(300): F.linear(x, w)
            res[shape[:-1]] = (time.perf_counter() - t) / 300 * 1e6
        print(f"W {n}x{k} round {rnd}: " + ", ".join(f"{s}: {v:.0f} us" for s, v in res.items()), flush=True)
