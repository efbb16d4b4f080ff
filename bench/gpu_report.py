"""What `python -m bench.gpu` writes from its results: the Markdown report, the plot and README's GPU block.

Reads both result shapes: one call of round 3 on (`model_only` a list of sections, one per model and input size,
and `kernels` / `served` / `video` sections, each stamped with card, date and torch) and the round-2 files (one
`model_only` dict), so `--replot` works on docs/results/bench_gpu_h100_round2 too.

`readme_block(result, cite)` is README's "GPU fast path" numbers: every table cites the results file and holds
only numbers that are in it (tests/test_readme.py checks this); `readme_into` puts it between README's markers
`<!-- bench.gpu --readme FILE.json -->` and `<!-- /bench.gpu -->`.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

from bench import BenchError

# issue 35 item 4: B1 at 1024x2048 (the Cityscapes frames), ms/img per batch, model only
TARGETS = {("b1", (1024, 2048)): {8: 1.1, 1: 1.5}}
END = "<!-- /bench.gpu -->"


def model_sections(result: dict) -> list[dict]:
    mo = result.get("model_only")
    if isinstance(mo, dict):  # round-2 files: one model at one size
        if not mo.get("rows"):
            return []
        acc = mo.get("agreement")
        return [{**mo, "variant": result.get("variant", ""), "weights": result.get("weights", ""),
                 "size": result.get("size", [1024, 1024]), "weights_kind": "shipped",
                 "agreement": {"ours": acc} if acc else {}}]
    return list(mo or [])


def title(sec: dict) -> str:
    h, w = sec["size"]
    return f"{sec['variant'].upper() or 'model'} {h}x{w}"


def annotate(result: dict) -> None:
    """Each of ours' rows gets `x_hf_compile`: HF torch.compile's ms/img at the same batch and section over ours'
    (kept in the results, so README's ratios come from the file)."""
    for sec in model_sections(result):
        hf = {r["batch"]: r["ms_per_img"] for r in sec["rows"] if r["impl"] == "HF torch.compile fp16"}
        for r in sec["rows"]:
            if r["impl"].startswith("ours") and r["batch"] in hf:
                r["x_hf_compile"] = hf[r["batch"]] / r["ms_per_img"]


def target_lines(result: dict) -> list[str]:
    out = []
    for sec in model_sections(result):
        goal = TARGETS.get((sec["variant"], tuple(sec["size"])))
        if not goal or sec.get("weights_kind") != "shipped":
            continue
        parts = []
        for b, limit in goal.items():
            ours = [r["ms_per_img"] for r in sec["rows"] if r["impl"].startswith("ours") and r["batch"] == b]
            parts.append(f"batch {b}: not measured (target <= {limit})" if not ours else
                         f"batch {b}: {min(ours):.3f} ms/img, target <= {limit}: "
                         f"{'met' if min(ours) <= limit else 'not met'}")
        out.append(f"Issue 35 item 4, {title(sec)} model only: " + "; ".join(parts) + ".")
    return out


def _stamp(sec: dict) -> str:
    s = sec.get("stamp") or {}
    return f" ({s['device']}, {s['date']}, torch {s['torch']})" if s else ""


def _skips(sec: dict) -> list[str]:
    return [f"- skipped {s['what']}: {s['why']}" for s in sec.get("skipped") or []]


def markdown(result: dict) -> str:
    md = [f"# GPU benchmark — {result['device']} ({result['date']})", ""]
    if result.get("torch"):
        md += [f"torch {result['torch']}" + (f", transformers {result['transformers']}" if result.get("transformers")
                                             else "") + (f"; `{result['command']}`" if result.get("command") else ""),
               ""]
    md += ["## Model only (uint8 in -> uint8 labels, on the GPU)", ""]
    for sec in model_sections(result):
        md += [f"### {title(sec)}, {sec.get('weights', '')} ({sec.get('weights_kind', 'shipped')}){_stamp(sec)}", "",
               "| implementation | batch | ms/img | img/s | x HF torch.compile |", "|---|---:|---:|---:|---:|"]
        for r in sec["rows"]:
            x = f"{r['x_hf_compile']:.2f}" if "x_hf_compile" in r else ""
            md.append(f"| {r['impl']} | {r['batch']} | {r['ms_per_img']:.3f} | {r['img_per_s']:.0f} | {x} |")
        for impl, acc in (sec.get("agreement") or {}).items():
            md += ["", f"Agreement of {impl} with the FP32 reference on {acc['images']} real images: "
                       f"**{100 * acc['agreement']:.3f} %** of pixels (worst image "
                       f"{100 * acc['min_image_agreement']:.3f} %)."]
        md += _profile(sec.get("profile"))
        comp = sec.get("compile_and_capture_s")
        if comp:
            md += ["", "Compile (+ CUDA-graph capture for ours) seconds: "
                   + "; ".join(f"{k}: {v:.0f}" for k, v in comp.items()) + "."]
        md += [""] + _skips(sec) if sec.get("skipped") else []
        md.append("")
    md += target_lines(result)
    md += _kernels(result.get("kernels"))
    md += _mixffn(result.get("mixffn"))
    md += _served(result.get("served"))
    md += _video(result.get("video"))
    skipped = result.get("skipped") or []
    if skipped:
        md += ["", "## Not run in this call", ""] + [f"- {s['what']}: {s['why']}" for s in skipped]
    return "\n".join(md) + "\n"


def _profile(prof: dict | None) -> list[str]:
    if not prof:
        return []
    md = ["", f"Where the time goes ({prof.get('impl', 'ours')}, batch {prof['batch']}, torch.profiler, "
              f"{prof['us_per_img']:.0f} us of GPU time per image):", "",
          "| kernels | us/img | share |", "|---|---:|---:|"]
    md += [f"| {g} | {v['us_per_img']:.1f} | {v['percent']:.1f} % |" for g, v in prof["groups"].items()]
    md += ["", "| top kernels | us/img | share |", "|---|---:|---:|"]
    md += [f"| `{k['kernel'][:90]}` | {k['us_per_img']:.1f} | {k['percent']:.1f} % |" for k in prof["top"][:12]]
    return md


def _kernels(k: dict | None) -> list[str]:
    if not k:
        return []
    md = ["", f"## Depthwise 3x3 + GELU kernel (bench.kernels_gpu){_stamp(k)}", ""]
    if k.get("rows"):
        md += [f"Batch {k['batch']}, {k['size']}² input.", "",
               "| stage | hidden tensor | ours us/img | PyTorch eager us/img | copy floor us/img | max abs err |",
               "|---:|---|---:|---:|---:|---:|"]
        md += [f"| {r['stage']} | {r['h']}x{r['w']}x{r['channels']} | {r['ours_us_per_img']:.1f} | "
               f"{r['torch_us_per_img']:.1f} | {r['copy_floor_us_per_img']:.1f} | {r['max_abs_err_vs_fp32']:.1e} |"
               for r in k["rows"]]
    return md + _skips(k)


def _mixffn(m: dict | None) -> list[str]:
    if not m:
        return []
    md = ["", f"## Mix-FFN half-block kernel (bench.kernels_mixffn){_stamp(m)}", ""]
    if m.get("rows"):
        from bench.kernels_mixffn import markdown as mixffn_markdown

        md += [("#" + ln if ln.startswith("# ") else ln) for ln in mixffn_markdown(m).splitlines()[2:]]
    return md + _skips(m)


def _served(s: dict | None) -> list[str]:
    if not s:
        return []
    md = ["", f"## Served through Triton (closed loop, multi-process, gRPC){_stamp(s)}", ""]
    if s.get("rows"):
        md += ["| scenario | GPUs | servers | payload | in flight | img/s | p50 ms | p99 ms | failures "
               "| server queue ms | compute ms (input / infer / output) | avg batch |",
               "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["rows"]:
            v = r.get("server") or {}
            payload = f"{r['payload']} {r['size']}" if r.get("size") else r["payload"]  # --served-size runs
            md.append(f"| {r.get('scenario', '')} | {r.get('gpus', '0')} | {r.get('servers', 1)} | {payload} | "
                      f"{r['in_flight']} | {r['img_per_s']:.0f} | {r['p50_ms'] or 0:.1f} | "
                      f"{r['p99_ms'] or 0:.1f} | {r['failures']} | {v.get('queue_ms', float('nan')):.2f} | "
                      f"{v.get('compute_ms', float('nan')):.2f}" + (
                          f" ({v['compute_input_ms']:.2f} / {v['compute_infer_ms']:.2f} / {v['compute_output_ms']:.2f})"
                          if "compute_input_ms" in v else "") + f" | {v.get('avg_batch', float('nan')):.1f} |")
    for key, lines in (s.get("stage_timing") or {}).items():
        md += ["", f"Per-stage time in the model ({key}), from the server log:"] + [f"    {ln}" for ln in lines[-2:]]
    if s.get("error"):
        md += ["", f"Served run failed: {s['error']}"]
    k = s.get("knee")
    if k:
        md += ["", f"Knee on one GPU (p99 <= 2 x p50): {k.get('scenario')}, {k['payload']}, "
                   f"{k['in_flight']} in flight, {k['img_per_s']:.0f} img/s, p50 {k['p50_ms']:.1f} ms, "
                   f"p99 {k['p99_ms']:.1f} ms."]
    return md + _skips(s)


def _video(v: dict | None) -> list[str]:
    if not v:
        return []
    md = ["", f"## Video through client.segment (bench.video){_stamp(v)}", ""]
    if v.get("runs"):
        c = v.get("clip") or {}
        md += [f"{v.get('model', '')}: {c.get('seconds', 0):g} s clip, {'x'.join(map(str, c.get('size', [])))} at "
               f"{c.get('fps', 0):g} fps ({c.get('frames', '?')} frames).", "",
               "| in flight | fps end to end | model compute img/s | p50 ms | p99 ms |", "|---:|---:|---:|---:|---:|"]
        md += [f"| {r['in_flight']} | {r['fps_end_to_end']:.2f} | {r.get('server_compute_fps') or 0:.2f} | "
               f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} |" for r in v["runs"]]
    return md + _skips(v)


def plot(result: dict, path: Path) -> None:
    """Model-only ms/img per batch size, one panel per model and input size; beside them, when there was a served
    run, served img/s against p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = model_sections(result)
    served_rows = (result.get("served") or {}).get("rows") or []
    n = max(1, len(secs)) + (1 if served_rows else 0)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    for a, sec in zip(axes[0], secs):
        for impl in dict.fromkeys(r["impl"] for r in sec["rows"]):
            rows = [r for r in sec["rows"] if r["impl"] == impl]
            a.plot([r["batch"] for r in rows], [r["ms_per_img"] for r in rows], "o-", label=impl)
        kind = "" if sec.get("weights_kind", "shipped") == "shipped" else ", random init"
        a.set(xscale="log", xlabel="batch", ylabel="ms per image (lower is better)",
              title=f"{title(sec)}{kind}, {result['device']}")
        ticks = sorted({r["batch"] for r in sec["rows"]})
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    if not secs:
        axes[0][0].text(0.5, 0.5, "no model-only rows in this call", ha="center", va="center")
        axes[0][0].set_axis_off()
    if served_rows:
        from bench.gpu_served import plot_served

        plot_served(axes[0][-1], served_rows)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_block(result: dict, cite: str) -> str:
    """README's numbers from one results file (`cite`: its path without suffix, under docs/results/)."""
    secs = model_sections(result)
    out = [_wrap(f"Model only, one {result['device']}, {result['date']} (torch {result.get('torch', '?')}; uint8 "
                 "frames in -> uint8 labels out on the GPU, CUDA-event timed; HF = transformers SegFormer of the same "
                 f"architecture with its own initial weights, speed only; `{cite}.md`, one call of `make bench`):"), "",
           "| model, input, weights | implementation | batch | ms/img | img/s | x HF torch.compile |",
           "|---|---|---:|---:|---:|---:|"]
    for sec in secs:
        kind = "shipped" if sec.get("weights_kind", "shipped") == "shipped" else "random init, speed only"
        for r in sec["rows"]:
            x = f"{r['x_hf_compile']:.2f}" if "x_hf_compile" in r else ""
            out.append(f"| {title(sec)}, {kind} | {r['impl']} | {r['batch']} | {r['ms_per_img']:.3f} | "
                       f"{r['img_per_s']:.0f} | {x} |")
    out.append("")
    for sec in secs:
        for impl, acc in (sec.get("agreement") or {}).items():
            out.append(_wrap(f"{title(sec)} {impl}: label agreement with the FP32 PyTorch reference **"
                             f"{100 * acc['agreement']:.3f} %** on {acc['images']} real frames (worst "
                             f"{100 * acc['min_image_agreement']:.3f} %)."))
    out += [_wrap(t) for t in target_lines(result)]
    k = result.get("kernels") or {}
    if k.get("rows"):
        out += ["", _wrap(f"The fused depthwise 3x3 + GELU kernel per B1 stage, batch {k['batch']}, {k['size']}² "
                          f"(`{cite}.md`, bench.kernels_gpu):"), "",
                "| stage | hidden tensor | ours us/img | PyTorch eager us/img | copy floor us/img |",
                "|---:|---|---:|---:|---:|"]
        out += [f"| {r['stage']} | {r['h']}x{r['w']}x{r['channels']} | {r['ours_us_per_img']:.1f} | "
                f"{r['torch_us_per_img']:.1f} | {r['copy_floor_us_per_img']:.1f} |" for r in k["rows"]]
    s = result.get("served") or {}
    if s.get("rows"):
        out += ["", _wrap(f"Served on one GPU (`{cite}.md`; `loadtest.closed_loop`, gRPC):"), "",
                "| scenario, payload | in flight | img/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
        out += [f"| {r.get('scenario', '')}, {r['payload']} | {r['in_flight']} | {r['img_per_s']:.0f} | "
                f"{r['p50_ms'] or 0:.1f} | {r['p99_ms'] or 0:.1f} |" for r in s["rows"] if not r["failures"]]
    v = result.get("video") or {}
    if v.get("runs"):
        out += ["", _wrap(f"Video through `client.segment` on {v.get('model', '')} (`{cite}.md`, bench.video):"), "",
                "| in flight | fps end to end | p50 ms | p99 ms |", "|---:|---:|---:|---:|"]
        out += [f"| {r['in_flight']} | {r['fps_end_to_end']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |"
                for r in v["runs"]]
    skipped = [f"{s['what']}: {s['why']}" for s in result.get("skipped") or []]
    if skipped:
        out += ["", _wrap("Not run in that call: " + "; ".join(skipped) + ".")]
    return "\n".join(out).rstrip() + "\n"


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=115, break_long_words=False, break_on_hyphens=False)


def begin_marker(json_rel: str) -> str:
    return f"<!-- bench.gpu --readme {json_rel} -->"


def placeholder(json_rel: str) -> str:
    """README's block before the results file exists: says which run writes it and the command that fills it."""
    return (f"Not measured yet: the H200 run writes `{json_rel}`; then\n"
            f"`python -m bench.gpu --readme {json_rel} --readme-into README.md` puts its numbers here.\n")


def readme_into(readme: Path, json_rel: str, block: str) -> str:
    """README's text with `block` between the markers of `json_rel`; a BenchError if README has no such markers."""
    text = readme.read_text()
    m = re.search(re.escape(begin_marker(json_rel)) + r"\n.*?" + re.escape(END), text, re.S)
    if not m:
        raise BenchError(f"{readme}: no `{begin_marker(json_rel)}` ... `{END}` markers to fill")
    return text[:m.start()] + begin_marker(json_rel) + "\n" + block + END + text[m.end():]
