"""Realistic synthetic recordings for the demo, the tests and the benchmarks.

- :func:`photometry_recording`: two-channel fibre photometry (signal and isosbestic) with
  photobleaching, shared motion artefacts, cue-locked calcium transients and behavioural
  events, shaped as DESIGN.md's Recording.
- :func:`write_photometry_batch`: a folder of such recordings in PhoPro's CSV layout with
  JSON sidecars, including the awkward trials a real batch has.
- :func:`movie_with_spikes`: a white-noise stimulus movie and spike trains of units with
  planted spatio-temporal receptive fields, shaped as DESIGN.md's Movie (small, in memory).
- :func:`receptive_field_movie`: the same at any size, lazily (a movie larger than memory is
  drawn chunk by chunk), with centre-surround receptive fields, silent units and spikes
  outside the movie on request; the input of ``neurobatch demo --kind sta``.
- :func:`ephys_recording`: a raw multichannel extracellular recording (int16, lazy) with
  spikes spread over neighbouring channels, LFP, mains hum and noise, plus the spike times
  as ground truth; the input of ``neurobatch demo --kind filter``.
- :func:`write_spikeglx` and :func:`write_movie`: write those as a SpikeGLX ``.bin`` +
  ``.meta`` pair and as a Zarr store.

Everything is deterministic given ``seed``.
"""

from neurobatch.synthetic.demo import (
    DEMO_FILTER_PIPELINE,
    DEMO_PIPELINE,
    DEMO_PIPELINES,
    DEMO_STA_PIPELINE,
    demo_pipeline_file,
)
from neurobatch.synthetic.ephys import PlantedRecording, ephys_recording
from neurobatch.synthetic.movie import PlantedMovie, movie_with_spikes, receptive_field_movie
from neurobatch.synthetic.photometry import (
    EVENT_NAMES,
    photometry_recording,
    write_photometry_batch,
)
from neurobatch.synthetic.writers import write_movie, write_spikeglx

__all__ = [
    "DEMO_FILTER_PIPELINE",
    "DEMO_PIPELINE",
    "DEMO_PIPELINES",
    "DEMO_STA_PIPELINE",
    "EVENT_NAMES",
    "PlantedMovie",
    "PlantedRecording",
    "demo_pipeline_file",
    "ephys_recording",
    "movie_with_spikes",
    "photometry_recording",
    "receptive_field_movie",
    "write_movie",
    "write_photometry_batch",
    "write_spikeglx",
]
