"""The report's figures, drawn with matplotlib's Agg backend (no display needed), as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are written on machines without a display
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from q7x2_deploy.report.run_record import RunRecord  # noqa: E402

_STEP_COLOURS = {"convert": "#8da0cb", "preprocess": "#66c2a5", "pretrain": "#fc8d62"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(run: RunRecord, attr: str) -> tuple[list[int], list[float]]:
    pts = [(r.iteration, getattr(r, attr)) for r in run.iterations if getattr(r, attr) is not None]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} logged yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def loss_and_lr(run: RunRecord) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 3.6))
    it, loss = _series(run, "lm_loss")
    if it:
        ax.plot(it, loss, color="#1f77b4", marker="." if len(it) < 60 else None, label="lm loss")
    else:
        _empty(ax, "lm loss")
    for c in run.checkpoints:
        ax.axvline(c, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("lm loss", color="#1f77b4")
    it_lr, lr = _series(run, "learning_rate")
    if it_lr:
        ax2 = ax.twinx()
        ax2.plot(it_lr, lr, color="#ff7f0e", linewidth=1, label="learning rate")
        ax2.set_ylabel("learning rate", color="#ff7f0e")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title("lm loss and learning rate (dotted: checkpoints saved)")
    return _png(fig)


def speed(run: RunRecord) -> bytes:
    fig, axes = plt.subplots(3, 1, figsize=(8, 6.4), sharex=True)
    it, ms = _series(run, "elapsed_ms")
    it_t, tflops = _series(run, "throughput_tflops")
    gbs_seq = [(r.iteration, r.global_batch_size * run.seq_length / (r.elapsed_ms / 1000.0))
               for r in run.iterations if r.elapsed_ms and r.global_batch_size and run.seq_length]
    for ax, (xs, ys), label in ((axes[0], (it, ms), "ms per iteration"), (axes[1], (it_t, tflops), "TFLOP/s per device"),
                                (axes[2], ([p[0] for p in gbs_seq], [p[1] for p in gbs_seq]), "tokens/s")):
        if xs:
            ax.plot(xs, ys, color="#2ca02c")
        else:
            _empty(ax, label)
        ax.set_ylabel(label)
    axes[-1].set_xlabel("iteration")
    axes[0].set_title("time per iteration and throughput")
    return _png(fig)


def grad_norm(run: RunRecord) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 2.8))
    it, gn = _series(run, "grad_norm")
    if it:
        ax.plot(it, gn, color="#9467bd")
    else:
        _empty(ax, "grad norm")
    ax.set_xlabel("iteration")
    ax.set_ylabel("grad norm")
    ax.set_title("gradient norm")
    return _png(fig)


def timeline(run: RunRecord) -> bytes:
    hosts = [h["name"] for h in run.plan.get("hosts", [])]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * max(len(hosts), 1)))
    t0 = run.first_time or 0.0
    end = run.last_time or t0
    for y, host in enumerate(hosts):
        for s in (s for s in run.spans if s.host == host):
            stop = s.end if s.end is not None else end
            ax.broken_barh([(s.start - t0, max(stop - s.start, 0.5))], (y - 0.35, 0.7),
                           facecolors=_STEP_COLOURS.get(s.step, "#bbbbbb"), edgecolor="red" if s.failed else "none")
        for m in (m for m in run.markers if m.host == host):
            ax.plot(m.time - t0, y, marker="X" if m.kind == "failure" else "^", markersize=10,
                    color="red" if m.kind == "failure" else "green", linestyle="none")
    ax.set_yticks(range(len(hosts)), hosts)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the start of the attempt")
    handles = [matplotlib.patches.Patch(color=c, label=s) for s, c in _STEP_COLOURS.items()]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False)
    ax.set_title("phases per host (X: failure, ^: recovery)")
    return _png(fig)


FIGURES = {"loss.png": loss_and_lr, "speed.png": speed, "grad_norm.png": grad_norm, "timeline.png": timeline}
