"""An independent, loop-based float64 re-implementation of the SReT forward pass, written from SPEC.md alone.

It reads weights by their published state-dict names and never calls the package's modules, so it can serve as the
oracle for the fast implementation. Only the (seeded, eval-mode) permutations are taken from the model, since they
are its internal state.
"""

import math

import torch
import torch.nn.functional as F


def attention_oracle(x, qkv_w, qkv_b, proj_w, proj_b, heads, groups, perm=None):
    """Grouped attention by explicit loops over batch, group and head: softmax(q k^T * scale) v."""
    B, N, C = x.shape
    D = C // heads
    xs = x[:, perm] if perm is not None else x
    qkv = xs @ qkv_w.T + qkv_b  # (B, N, 3C): [q | k | v], each heads x D
    out = torch.zeros(B, N, C, dtype=x.dtype)
    n = N // groups
    for b in range(B):
        for g in range(groups):
            rows = slice(g * n, (g + 1) * n)
            for h in range(heads):
                q = qkv[b, rows, h * D:(h + 1) * D]
                k = qkv[b, rows, C + h * D:C + (h + 1) * D]
                v = qkv[b, rows, 2 * C + h * D:2 * C + (h + 1) * D]
                a = torch.softmax(q @ k.T / math.sqrt(D), dim=-1)
                out[b, rows, h * D:(h + 1) * D] = a @ v
    if perm is not None:
        unshuffled = torch.empty_like(out)
        unshuffled[:, perm] = out  # token perm[i] of the original order sat at position i
        out = unshuffled
    return out @ proj_w.T + proj_b


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def _mlp(x, sd, p):
    h = F.gelu(x @ sd[p + ".fc1.weight"].T + sd[p + ".fc1.bias"])
    return h @ sd[p + ".fc2.weight"].T + sd[p + ".fc2.bias"]


def reference_forward(model, x, cfg):
    """cfg: dict(heads, depths, unique, groups1, groups2) per stage."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    x = x.double()
    for i in (1, 2, 3):
        x = F.conv2d(x, sd[f"patch_embed.conv{i}.weight"], sd[f"patch_embed.conv{i}.bias"], stride=2, padding=1)
        x = F.batch_norm(x, sd[f"patch_embed.bn{i}.running_mean"], sd[f"patch_embed.bn{i}.running_var"],
                         sd[f"patch_embed.bn{i}.weight"], sd[f"patch_embed.bn{i}.bias"], False, 0.0, 1e-5)
        x = F.relu(x)
    x = x + sd["pos_embed"]
    for s in range(len(cfg["depths"])):
        if s > 0:
            w = sd[f"pools.{s - 1}.conv.weight"]
            x = F.conv2d(x, w, sd[f"pools.{s - 1}.conv.bias"], stride=2, padding=1, groups=x.shape[1])
        B, C, H, W = x.shape
        t = x.reshape(B, C, H * W).transpose(1, 2)
        R, L = cfg["unique"][s], cfg["depths"][s] // cfg["unique"][s]
        perms = model.transformers[s].permutations(H * W, torch.device("cpu"))
        step = 0
        for r in range(R):
            for loop in range(L):
                p = f"transformers.{s}.blocks.{2 * (r * L + loop)}"
                nll = f"transformers.{s}.blocks.{2 * (r * L + loop) + 1}"
                groups = cfg["groups1"][s] if loop == 0 else cfg["groups2"][s]
                perm = perms[step] if (loop > 0 and groups > 1) else None
                a = attention_oracle(_ln(t, sd, p + ".norm1"), sd[p + ".attn.qkv.weight"], sd[p + ".attn.qkv.bias"],
                                     sd[p + ".attn.proj.weight"], sd[p + ".attn.proj.bias"], cfg["heads"][s], groups,
                                     perm)
                c = [sd[f"{p}.coefficient{j}.bias"] for j in (1, 2, 3, 4)]
                t = c[0] * t + c[1] * a
                t = c[2] * t + c[3] * _mlp(_ln(t, sd, p + ".norm2"), sd, p + ".mlp")
                n1, n2 = sd[nll + ".coefficient1.bias"], sd[nll + ".coefficient2.bias"]
                t = n1 * t + n2 * _mlp(_ln(t, sd, nll + ".norm1"), sd, nll + ".mlp")
                step += 1
        x = t.transpose(1, 2).reshape(B, C, H, W)
    pooled = x.mean(dim=(2, 3))
    pooled = _ln(pooled, sd, "norm")
    return pooled @ sd["head.weight"].T + sd["head.bias"]
