"""openSMILE functionals, with the next native extractor made ready in the background.

openSMILE builds a new native extractor for every signal, and building one parses its
feature set's configuration: for ComParE about 16 ms on a 2-core machine, more than
extracting a 2 s clip at 8 kHz takes (about 10 ms). ``SmileSet`` keeps the next extractor
built on a background thread, which the native library runs outside the GIL, so a clip
pays for the extraction alone. The values are ``opensmile.Smile.process_signal``'s
(tested); what is built is the library's own (``Smile._smile``, ``Smile._options``).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

_OPENSMILE_SETS = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}


class SmileSet:
    """One openSMILE feature set's functionals of a mono float signal."""

    def __init__(self, feature_set: str) -> None:
        import opensmile

        self.smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet[_OPENSMILE_SETS[feature_set]],
            feature_level=opensmile.FeatureLevel.Functionals,
        )
        self._lock = threading.Lock()
        self._owner = -1  # the process the builder and the ready extractors belong to
        self._builder: ThreadPoolExecutor | None = None
        self._ready: dict[int, Future] = {}  # per sample rate

    @property
    def feature_names(self) -> list[str]:
        return list(self.smile.feature_names)

    def extract(self, signal: np.ndarray, sample_rate: int) -> np.ndarray:
        """The set's functionals of ``signal`` (values in [-1, 1]), as float32."""
        from opensmile.core.config import config
        from opensmile.core.smile import Smile

        values, starts, ends = [], [], []
        extractor = self._take(sample_rate)
        try:
            extractor.external_sink_set_callback_ex(
                config.EXTERNAL_OUTPUT_COMPONENT, Smile._sink_callback(values, starts, ends)
            )
            # openSMILE's own conversion to 16 bits, for the same values as process_signal
            samples = (signal.astype(np.float32) * 32768).astype(np.int16)
            extractor.external_audio_source_write_data(
                config.EXTERNAL_SOURCE_COMPONENT, samples.tobytes()
            )
            extractor.external_audio_source_set_eoi(config.EXTERNAL_SOURCE_COMPONENT)
            extractor.run()
        finally:
            extractor.free()
        if not values:  # as process_signal: a clip too short for the set's windows
            return np.full(len(self.smile.feature_names), np.nan, np.float32)
        return np.vstack(values)[0].astype(np.float32)

    def _take(self, sample_rate: int):
        """A built extractor for ``sample_rate``; the next one starts building."""
        with self._lock:
            if self._owner != os.getpid():  # first use, or a forked child: start afresh
                self._owner = os.getpid()
                self._builder = ThreadPoolExecutor(1, thread_name_prefix="opensmile")
                self._ready = {}
            ready = self._ready.pop(sample_rate, None)
            self._ready[sample_rate] = self._builder.submit(self._build, sample_rate)
        return ready.result() if ready is not None else self._build(sample_rate)

    def _build(self, sample_rate: int):
        from opensmile.core.config import config

        options = self.smile._options()
        options["source"] = os.path.join(
            self.smile.default_config_root, config.EXTERNAL_INPUT_CONFIG
        )
        options["sampleRate"] = sample_rate
        options["nBits"] = 16
        return self.smile._smile(options=options)
