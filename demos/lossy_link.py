"""Send a recording through links of rising loss and plot what the receiver made of it.

For each loss rate the whole loop runs in this process (`ecdc_stream.commands.simulate`): encode,
seeded faults, link framing, jitter buffer, decode, concealment. The figure shows the clean and
the received waveform at one loss rate with the concealed chunks shaded, and the concealed
fraction and the SNR against the clean decode for every loss rate.

    python demos/lossy_link.py                       # the 20 s test recording, 24 kHz model
    python demos/lossy_link.py IN.wav --out link.png --losses 0 0.05 0.1 0.2 0.4 --ber 1e-5

The model's weights are found as for `ecdc-stream encode` (torch hub cache, --weights or
ECDC_STREAM_WEIGHTS), and downloaded once if missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ecdc_stream.commands.send import file_source_stage, load_sender_model, prepare_encoding  # noqa: E402
from ecdc_stream.commands.simulate import SimulationResult, simulate  # noqa: E402
from ecdc_stream.faults import FaultConfig  # noqa: E402

RECORDING = Path(__file__).resolve().parents[2] / "shared" / "audio" / "test_24k.wav"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", default=str(RECORDING), help="sound file to send (default: the 20 s test recording)")
    parser.add_argument("--out", default="lossy_link.png", help="PNG to write (default: lossy_link.png)")
    parser.add_argument("--model", default="24khz", help="24khz, 48khz or a registered model name (default: 24khz)")
    parser.add_argument("--bandwidth", type=float, default=6.0, help="kbps (default: 6)")
    parser.add_argument("--chunk-seconds", type=float, default=0.5, help="audio per chunk, in s (default: 0.5)")
    parser.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--ber", type=float, default=0.0, help="bit-error rate added at every loss rate (default: 0)")
    parser.add_argument("--show-loss", type=float, default=0.1, help="loss rate whose waveforms are drawn (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="folder of the checkpoint files")
    return parser.parse_args()


def run_all(args: argparse.Namespace) -> dict[float, SimulationResult]:
    """Run one simulation per loss rate, encoding the input once."""
    model = load_sender_model(args.model, args.weights)
    _, total = file_source_stage(args.input, model)
    encoding = prepare_encoding(model, args.bandwidth, args.chunk_seconds, weights=args.weights, total_samples=total, keep_chunks=True)

    results = {}
    for loss in sorted(set(args.losses) | {args.show_loss}):
        faults = FaultConfig(loss=loss, ber=args.ber, seed=args.seed)
        result = anyio.run(lambda: simulate(args.input, model, faults, encoding=encoding, weights=args.weights))
        report = result.report
        snr = "identical" if report.identical_to_reference else f"{report.snr_db:.1f} dB"
        print(f"loss {loss:5.2f}: {report.chunks_lost:3d} lost, {report.chunks_corrupt:3d} corrupt, "
              f"{report.seconds_concealed:6.2f} s concealed, SNR {snr}")
        results[loss] = result
    return results


def plot(results: dict[float, SimulationResult], show_loss: float, out: str) -> None:
    """Draw the waveforms at `show_loss` and the sweep, and save the figure as `out`."""
    shown = results[show_loss]
    rate = shown.params.sample_rate
    time = np.arange(shown.clean.shape[1]) / rate

    figure, (clean_axis, received_axis, sweep_axis) = plt.subplots(3, 1, figsize=(11, 9), constrained_layout=True)
    clean_axis.plot(time, shown.clean[0], linewidth=0.4, color="tab:blue")
    clean_axis.set_title("clean decode")
    received_axis.plot(time, shown.received[0], linewidth=0.4, color="tab:green")
    received_axis.set_title(f"received at {show_loss:.0%} loss (concealed chunks shaded)")

    # Concealed chunks start at sequence * chunk_samples and last their gap's duration.
    for gap in shown.receiver.gaps:
        start = gap.sequence * shown.params.chunk_samples / rate
        for axis in (clean_axis, received_axis):
            axis.axvspan(start, start + gap.num_samples / rate, color="tab:red", alpha=0.25, linewidth=0)
    for axis in (clean_axis, received_axis):
        axis.set_xlim(0, time[-1] if len(time) else 1)
        axis.set_xlabel("time (s)")
        axis.set_ylabel("amplitude")

    losses = sorted(results)
    concealed = [results[p].report.seconds_concealed / max(results[p].report.seconds_output, 1e-9) for p in losses]
    snrs = [results[p].report.snr_db for p in losses]
    sweep_axis.plot(losses, concealed, "o-", color="tab:red", label="concealed fraction")
    sweep_axis.plot(losses, losses, ":", color="gray", label="loss rate")
    sweep_axis.set_xlabel("chunk loss rate")
    sweep_axis.set_ylabel("fraction of the audio concealed")
    snr_axis = sweep_axis.twinx()
    measured = [(p, s) for p, s in zip(losses, snrs) if s is not None]
    if measured:
        snr_axis.plot(*zip(*measured), "s-", color="tab:blue", label="SNR against clean decode")
    snr_axis.set_ylabel("SNR (dB); no point where identical")
    lines = sweep_axis.get_legend_handles_labels()
    more = snr_axis.get_legend_handles_labels()
    sweep_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    sweep_axis.set_title("concealed fraction and SNR against loss rate")

    figure.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    args = parse_args()
    results = run_all(args)
    plot(results, args.show_loss, args.out)


if __name__ == "__main__":
    main()
