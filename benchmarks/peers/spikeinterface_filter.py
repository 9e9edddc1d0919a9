"""spikeinterface's side of the filter suite, run as a whole process in its own environment.

spikeinterface pins ``zarr < 3`` and neurobatch needs Zarr 3, so this script runs with the
Python of a virtual environment of its own (:func:`benchmarks.filter.spikeinterface_python`
makes it) and imports nothing of neurobatch. It does what a spikeinterface user writes for
the suite's recording::

    recording = read_binary(...)                  # int16, with the .meta's gain in µV
    recording = scale_to_uV(recording)            # float32 µV
    recording = common_reference(recording, reference="global", operator="median")
    recording = bandpass_filter(recording, freq_min, freq_max, filter_order=order,
                                ftype="butter", filter_mode="sos",
                                direction="forward-backward", dtype="float32")
    recording.save(format="zarr", folder=out, n_jobs=..., chunk_duration=...)

the same operations, in the same order, as neurobatch's ``filter`` pipeline with
``common_reference: median``: samples to µV, the median over channels subtracted, a
zero-phase Butterworth band-pass (``sosfiltfilt``), float32 µV stored. ``read_binary`` stands
in for ``read_spikeglx``, whose reader (neo) needs the probe's part number (``imDatPrb_pn``),
which the synthetic ``.meta`` does not have; the gain is the ``.meta``'s, as neurobatch's
loader reads it.

It prints ``ready`` once its imports are done, then one line of JSON: the filter's margin in
samples and the seconds the save took.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bin", help="the interleaved int16 .bin")
    parser.add_argument("out", help="the Zarr folder to write")
    parser.add_argument("--channels", type=int, required=True)
    parser.add_argument("--fs", type=float, required=True)
    parser.add_argument("--gain-uv", type=float, required=True)
    parser.add_argument("--band", type=float, nargs=2, required=True)
    parser.add_argument("--order", type=int, required=True)
    parser.add_argument("--n-jobs", type=int, required=True)
    parser.add_argument("--chunk-duration", required=True)
    args = parser.parse_args()

    import spikeinterface.core as si
    import spikeinterface.preprocessing as spre

    print("ready", flush=True)
    recording = si.read_binary(
        args.bin,
        sampling_frequency=args.fs,
        dtype="int16",
        num_channels=args.channels,
        gain_to_uV=args.gain_uv,
        offset_to_uV=0.0,
    )
    recording = spre.scale_to_uV(recording)
    recording = spre.common_reference(recording, reference="global", operator="median")
    recording = spre.bandpass_filter(
        recording,
        freq_min=args.band[0],
        freq_max=args.band[1],
        filter_order=args.order,
        ftype="butter",
        filter_mode="sos",
        direction="forward-backward",
        dtype="float32",
    )
    start = time.perf_counter()
    recording.save(
        format="zarr",
        folder=args.out,
        n_jobs=args.n_jobs,
        chunk_duration=args.chunk_duration,
        progress_bar=False,
    )
    print(
        json.dumps(
            {
                "margin_samples": int(recording.margin_samples),
                "save_s": time.perf_counter() - start,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
