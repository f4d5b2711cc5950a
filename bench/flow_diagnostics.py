"""What a trained planar flow guide does, layer by layer (BENCHMARKS.md, section 6).

For a run directory of a planar guide: the validation ELBO with the flow and with its base
distribution alone, and per layer the mean ``|w|``, ``|u_hat|``, ``w^T u_hat``, the share of samples
whose tanh is saturated (``|w^T z + b| > 2``: the layer is then a translation by ``u_hat``), the
mean distance the layer moves ``z`` and its mean log-det-Jacobian.

Run (from the repository root; seconds)::

    python bench/flow_diagnostics.py runs/seed/planar-10
"""

import argparse
import sys

import torch


def main(argv=None) -> int:
    from pyro_gen.infer.objectives import flow_kl
    from pyro_gen.run import load_run

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--points", type=int, default=2000, help="validation images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    _, model, guide, splits = load_run(args.run_dir)
    x = (splits["valid"] if "valid" in splits else splits["test"]).x[: args.points]
    with torch.no_grad():
        h = guide.encoder(x)
        family = guide.families[0]
        q, base = family(h), family.base(h)

        def elbo(qd, flow: bool) -> float:
            z = qd.rsample()
            ll = model.likelihood(model.decode(z), len(model.data_shape)).log_prob(x)
            prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z)), 1)
            kl = flow_kl(qd, prior, z) if flow else torch.distributions.kl_divergence(qd, prior)
            return (ll - kl).mean().item()

        print(f"validation ELBO with the flow: {elbo(q, True):.2f}; with the base distribution alone: {elbo(base, False):.2f}")
        print("| layer | |w| | |u_hat| | w^T u_hat | saturated share | mean move of z | mean log-det |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        z = base.rsample()
        for i, t in enumerate(q.transforms):
            b, u, w = t._params() if callable(t._params) else t._params
            u_hat = t.u_hat(u, w)
            pre = (w * z).sum(-1, keepdim=True) + b
            y = t(z)
            log_det = t.log_abs_det_jacobian(z, y)
            print(
                f"| {i} | {w.norm(dim=-1).mean():.2f} | {u_hat.norm(dim=-1).mean():.2f} | {(w * u_hat).sum(-1).mean():.2f} | "
                f"{(pre.abs() > 2).float().mean():.2f} | {(y - z).norm(dim=-1).mean():.2f} | {log_det.mean():.3f} |"
            )
            z = y
    return 0


if __name__ == "__main__":
    sys.exit(main())
