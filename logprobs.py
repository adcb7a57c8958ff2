"""Per-token log-probs and entropies of the output layer without the [N, V] logits (method 7).

a3po.token_logprobs calls this with the plain meaning in its docstring:
log_softmax(hidden @ weight.T).gather(targets), and the entropy of that softmax. The logits of
8192 tokens over a 151,936-token vocabulary take 5 GB in fp32; here they exist one chunk of
rows at a time, in forward and again in backward. a3po.py imports this file.
"""
import torch


def _compute_dtype(*tensors) -> torch.dtype:
    # fp32 for fp32/bf16/fp16 inputs (log-probs of a 150k vocabulary need fp32 logits);
    # float64 inputs stay float64 so torch.autograd.gradcheck can check this function.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class ChunkedTokenLogprobs(torch.autograd.Function):
    """log p(target) and entropy of softmax(h W^T), chunk_size rows of logits at a time.

    Forward saves only the inputs plus two numbers per row (logsumexp, entropy); backward
    recomputes each chunk's logits. So peak extra memory is O(chunk_size * V), never N * V.
    With z = logits of one row, q = softmax(z), H = -sum_j q_j log q_j:
        d logp / d z_j = onehot_j - q_j
        d H    / d z_j = -q_j (log q_j + H)          (= -q_j (z_j - sum_k q_k z_k))
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, with_entropy):
        ctx.set_materialize_grads(False)  # an unused output (e.g. entropy) gives g=None: skip its term
        cdtype = _compute_dtype(hidden, weight)
        N = hidden.shape[0]
        logp = torch.empty(N, dtype=cdtype, device=hidden.device)    # [N]
        lse = torch.empty(N, dtype=cdtype, device=hidden.device)     # [N] saved for backward
        ent = torch.empty(N, dtype=cdtype, device=hidden.device) if with_entropy else None
        # autocast off: under bf16 autocast the matmul would round logits to bf16.
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdtype)                                    # [V, d] (no copy when fp32)
            for s in range(0, N, chunk_size):
                e = min(s + chunk_size, N)
                logits = hidden[s:e].to(cdtype) @ w.T               # [c, V]
                lse[s:e] = torch.logsumexp(logits, dim=-1)
                logq = logits.sub_(lse[s:e, None])                  # [c, V] log softmax, in place
                logp[s:e] = logq.gather(1, targets[s:e, None]).squeeze(1)
                if with_entropy:
                    q = logq.exp()                                  # [c, V]
                    ent[s:e] = -(q.mul_(logq)).sum(dim=-1)          # H = -sum q log q
                    del q
                del logits, logq  # free this chunk's [c, V] before the next one allocates (else 2x peak)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        return logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return None, None, None, None, None
        cdtype, N, c = lse.dtype, hidden.shape[0], ctx.chunk_size
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdtype)                                    # [V, d]
            dh = torch.empty(hidden.shape, dtype=cdtype, device=hidden.device) if need_h else None  # [N, d]
            dw = torch.zeros(w.shape, dtype=cdtype, device=w.device) if need_w else None            # [V, d]
            for s in range(0, N, c):
                e = min(s + c, N)
                h = hidden[s:e].to(cdtype)                           # [c, d]
                logq = (h @ w.T).sub_(lse[s:e, None])                # [c, V] recomputed log softmax
                # dlogits = g_logp * (onehot - q) + g_ent * (-q (logq + H))
                #         = q * (a + b * logq) + g_logp * onehot,  a = -g_logp - g_ent * H,  b = -g_ent
                # built in place (few passes over [c, V]: this loop is memory-bound next to the matmuls)
                gl = g_logp[s:e, None].to(cdtype) if g_logp is not None else None   # [c, 1]
                if g_ent is None:
                    q, dlogits = None, logq.exp_().mul_(-gl)         # [c, V], no second buffer
                else:
                    ge = g_ent[s:e, None].to(cdtype)                 # [c, 1]
                    a = -ge * ent[s:e, None] - (gl if gl is not None else 0)
                    q = logq.exp()                                   # [c, V]
                    dlogits = logq.mul_(-ge).add_(a).mul_(q)         # [c, V]
                if gl is not None:
                    dlogits.scatter_add_(1, targets[s:e, None], gl)
                if need_h:
                    torch.mm(dlogits, w, out=dh[s:e])                # [c, d] = [c, V] @ [V, d]
                if need_w:
                    dw.addmm_(dlogits.T, h)                          # [V, d] += [V, c] @ [c, d]
                del logq, dlogits, q  # free this chunk's [c, V] buffers before the next chunk's
        return (dh.to(hidden.dtype) if need_h else None, dw.to(weight.dtype) if need_w else None,
                None, None, None)
