"""Typed, validated view of params.yaml: the single source of every knob."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ser.errors import SerError

DEFAULT_PARAMS = Path("params.yaml")

CorpusName = Literal["ravdess", "crema_d", "tess", "savee"]
AugmentKind = Literal[
    "noise", "babble", "room", "band", "codec", "level", "clip", "pitch", "stretch"
]
Stat = Literal["mean", "std", "min", "max", "median", "skew", "kurtosis"]
FeatureSet = Literal["seed", "egemaps", "compare"]


class ConfigError(SerError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    raw_dir: Path = Path("data/raw")
    corpora: list[CorpusName] = Field(
        default_factory=lambda: ["ravdess", "crema_d", "tess", "savee"]
    )


class SplitParams(_Section):
    seed: int = 223
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _leaves_training_speakers(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "val_fraction + test_fraction must be < 1 so that training speakers remain"
            )
        return self


class AudioParams(_Section):
    sample_rate: int = Field(16000, ge=8000, le=96000)
    trim_top_db: float | None = Field(30.0, gt=0)
    offset: float = Field(0.0, ge=0)
    window: float | None = Field(None, gt=0)
    target_dbfs: float = Field(-20.0, lt=0)
    min_duration: float = Field(0.3, ge=0)
    max_duration: float | None = Field(60.0, gt=0)


def _ordered_pair(name: str, pair: tuple[float, float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name} must be [low, high], got {list(pair)}")


class AugmentParams(_Section):
    """Waveform copies of training clips (``ser.signal.augment``): one per recipe of
    ``copies``, each transform drawing its parameters from its range."""

    seed: int = 7
    copies: list[list[AugmentKind]] = Field(
        default_factory=lambda: [
            ["noise", "level"],
            ["room", "babble"],
            ["band", "codec", "noise"],
            ["pitch", "room", "clip"],
        ]
    )
    noise_snr_db: tuple[float, float] = (0.0, 30.0)
    babble_snr_db: tuple[float, float] = (0.0, 25.0)
    rt60: tuple[float, float] = (0.15, 1.0)
    band_low_hz: tuple[float, float] = (150.0, 500.0)
    band_high_hz: tuple[float, float] = (2800.0, 4200.0)
    codec_kbps: tuple[int, int] = (8, 16)
    level_db: tuple[float, float] = (-40.0, 0.0)
    clip_percentile: tuple[int, int] = (0, 20)
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    stretch_rate: tuple[float, float] = (0.9, 1.1)

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> AugmentParams:
        for name in (
            "noise_snr_db",
            "babble_snr_db",
            "rt60",
            "band_low_hz",
            "band_high_hz",
            "codec_kbps",
            "level_db",
            "clip_percentile",
            "pitch_semitones",
            "stretch_rate",
        ):
            _ordered_pair(name, getattr(self, name))
        if self.stretch_rate[0] <= 0 or self.rt60[0] <= 0:
            raise ValueError("stretch_rate and rt60 must be positive")
        if self.band_low_hz[1] >= self.band_high_hz[0]:
            raise ValueError("band_low_hz must lie below band_high_hz")
        if not 8 <= self.codec_kbps[0] <= 320 or not 0 <= self.clip_percentile[1] < 100:
            raise ValueError("codec_kbps must lie in [8, 320] and clip_percentile in [0, 100)")
        if any(not recipe for recipe in self.copies):
            raise ValueError("copies: each recipe needs at least one kind")
        return self


class FeatureParams(_Section):
    sets: list[FeatureSet] = Field(default_factory=lambda: ["compare"], min_length=1)
    speaker_norm: Literal["none", "per_speaker"] = "none"
    n_fft: int = Field(512, ge=64)
    hop_length: int = Field(160, ge=16)
    n_mels: int = Field(64, ge=8)
    n_mfcc: int = Field(40, ge=1)
    sample_rate: int | None = Field(8000, ge=1000)
    stats: list[Stat] = Field(default_factory=lambda: ["mean", "std"], min_length=1)
    workers: int = Field(2, ge=1)
    cache_dir: Path = Path("data/cache/features")

    @model_validator(mode="after")
    def _mfcc_fit_mels(self) -> FeatureParams:
        if len(set(self.sets)) != len(self.sets):
            raise ValueError(f"sets lists a feature set twice: {self.sets}")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        return self


PositiveFloats = list[Annotated[float, Field(gt=0)]]
PositiveInts = list[Annotated[int, Field(ge=1)]]
ModelKind = Literal["spectrogram_cnn", "seed_cnn", "logreg", "linear_svm", "fusion"]
FusionPooling = Literal["average", "log_linear"]


class FrameParams(_Section):
    """Log-mel frames of each clip, the spectrogram CNN's input (``frames`` section)."""

    n_mels: int = Field(40, ge=8)
    n_fft: int = Field(1024, ge=64)
    win_length: int = Field(640, ge=16)
    hop_length: int = Field(320, ge=16)
    fmin: float = Field(50.0, ge=0)
    fmax: float | None = Field(4000.0, gt=0)
    top_db: float | None = Field(60.0, gt=0)
    max_frames: int = Field(150, ge=16)

    @model_validator(mode="after")
    def _window_fits(self) -> FrameParams:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) cannot exceed n_fft ({self.n_fft})")
        if self.fmax is not None and self.fmax <= self.fmin:
            raise ValueError(f"fmax ({self.fmax}) must be above fmin ({self.fmin})")
        return self


class ModelParams(_Section):
    kind: ModelKind = "fusion"


class PreprocessingParams(_Section):
    """Clip-statistics preprocessing, fitted on training rows (seed_cnn, logreg, linear_svm)."""

    input_clip: float | None = Field(5.0, gt=0)
    select_k: int | None = Field(1000, ge=1)


class SeedCnnParams(_Section):
    filters: tuple[int, int, int] = (64, 128, 256)
    kernel_size: int = Field(3, ge=1)
    pool_size: int = Field(2, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    dense_units: tuple[int, int] = (64, 16)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    input_noise: float = Field(0.3, ge=0)
    l2: float = Field(1e-3, ge=0)


class LinearParams(_Section):
    C: float = Field(0.01, gt=0)
    C_grid: PositiveFloats = Field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1])


class SpectrogramCnnParams(_Section):
    channels: PositiveInts = Field(default_factory=lambda: [16, 32, 64, 128], min_length=1)
    convs_per_block: int = Field(2, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    peak_learning_rate: float = Field(2e-3, gt=0)
    warmup_fraction: float = Field(0.3, ge=0, lt=1)
    weight_decay: float = Field(1e-2, ge=0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(60, ge=1)
    mixup_alpha: float = Field(0.4, ge=0)
    freq_masks: int = Field(2, ge=0)
    freq_mask_bands: int = Field(8, ge=1)
    time_masks: int = Field(2, ge=0)
    time_mask_fraction: float = Field(0.08, gt=0, le=1)
    augmented_copies: bool = True

    @model_validator(mode="after")
    def _peak_above_start(self) -> SpectrogramCnnParams:
        if self.peak_learning_rate < self.learning_rate:
            raise ValueError("peak_learning_rate must be at least learning_rate")
        return self


class FusionParams(_Section):
    pooling: FusionPooling = "average"
    weights: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], min_length=1
    )


class TrainParams(_Section):
    seed: int = 42
    epochs: int = Field(60, ge=1)
    monitor: Literal["val_uar", "val_loss"] = "val_uar"
    early_stopping_patience: int = Field(12, ge=1)
    reduce_lr_patience: int = Field(5, ge=1)
    reduce_lr_factor: float = Field(0.5, gt=0, lt=1)
    class_weights: bool = True
    mixup_alpha: float = Field(0.4, ge=0)
    refit_on_val: bool = True


def _check_range(name: str, pair: tuple[float, float] | None, low: float, log: bool) -> None:
    if pair is None:
        return
    _ordered_pair(name, pair)
    if pair[0] < low or (log and pair[0] <= 0):
        raise ValueError(f"{name} range must be {'positive' if log else f'>= {low}'}")


class SeedCnnSpace(_Section):
    """Choices (lists) and ranges ([low, high]) the tuner samples for the seed CNN."""

    filters_1: PositiveInts = Field(default_factory=lambda: [32, 64, 96], min_length=1)
    filters_2: PositiveInts = Field(default_factory=lambda: [64, 128, 192], min_length=1)
    filters_3: PositiveInts = Field(default_factory=lambda: [128, 256, 384], min_length=1)
    kernel_size: PositiveInts = Field(default_factory=lambda: [3, 5, 7], min_length=1)
    pool_size: PositiveInts = Field(default_factory=lambda: [2, 3], min_length=1)
    dense_1: PositiveInts = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    dense_2: PositiveInts = Field(default_factory=lambda: [8, 16, 32], min_length=1)
    dropout: tuple[float, float] = (0.1, 0.6)
    learning_rate: tuple[float, float] = (2e-4, 3e-3)
    batch_size: PositiveInts = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    # optional: null leaves the seed_cnn section's value untuned
    input_noise: tuple[float, float] | None = None
    l2: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ranges_are_valid(self) -> SeedCnnSpace:
        _check_range("dropout", self.dropout, 0, log=False)
        _check_range("learning_rate", self.learning_rate, 0, log=True)
        _check_range("input_noise", self.input_noise, 0, log=False)
        _check_range("l2", self.l2, 0, log=True)
        if self.dropout[1] >= 1:
            raise ValueError("dropout range must lie in [0, 1)")
        return self


class SpectrogramCnnSpace(_Section):
    """Choices (lists) and ranges ([low, high]) the tuner samples for the spectrogram CNN."""

    base_channels: PositiveInts = Field(default_factory=lambda: [16, 24, 32], min_length=1)
    dropout: tuple[float, float] = (0.1, 0.5)
    learning_rate: tuple[float, float] = (5e-4, 2e-3)
    mixup_alpha: tuple[float, float] = (0.0, 0.6)
    freq_mask_bands: PositiveInts = Field(default_factory=lambda: [4, 8, 12], min_length=1)
    time_mask_fraction: tuple[float, float] = (0.04, 0.15)

    @model_validator(mode="after")
    def _ranges_are_valid(self) -> SpectrogramCnnSpace:
        _check_range("dropout", self.dropout, 0, log=False)
        _check_range("learning_rate", self.learning_rate, 0, log=True)
        _check_range("mixup_alpha", self.mixup_alpha, 0, log=False)
        _check_range("time_mask_fraction", self.time_mask_fraction, 0, log=True)
        return self


class SearchSpace(_Section):
    """Each tunable kind's own search space."""

    seed_cnn: SeedCnnSpace = SeedCnnSpace()
    spectrogram_cnn: SpectrogramCnnSpace = SpectrogramCnnSpace()


class TuneParams(_Section):
    enabled: bool = False
    n_trials: int = Field(20, ge=1)
    timeout_s: float | None = Field(3600, gt=0)
    seed: int = 13
    n_jobs: int = Field(1, ge=1)
    storage: str = Field("sqlite:///tuning/study/study.db", min_length=1)
    max_epochs: int = Field(40, ge=1)
    pruner_warmup_epochs: int = Field(8, ge=0)
    space: SearchSpace = SearchSpace()


class EvaluateParams(_Section):
    slices: list[Literal["corpus", "sex", "intensity"]] = Field(
        default_factory=lambda: ["corpus", "sex", "intensity"]
    )


class SpeechParams(_Section):
    """The speech gate (``ser.signal.speech``): how much speech a clip must hold to be
    answered, judged by a voice-activity detector on the audio as given."""

    threshold: float = Field(0.3, gt=0, lt=1)
    min_speech_seconds: float = Field(0.2, ge=0)


class CalibrationParams(_Section):
    """Temperature scaling fitted on validation speakers, and the optional ``uncertain`` answer."""

    enabled: bool = True
    uncertain_min_accuracy: float | None = Field(None, gt=0, le=1)


class MonitorParams(_Section):
    """``ser monitor``: where the inference log is, and when a window of it counts as drift."""

    log: str = Field("logs/inference", min_length=1)
    window_days: float = Field(1.0, gt=0)
    min_clips: int = Field(30, ge=1)
    drift_method: str = Field("wasserstein", min_length=1)
    drift_threshold: float = Field(1.2, gt=0)
    max_drifted_share: float = Field(0.0, ge=0, le=1)
    label_drift_threshold: float = Field(0.3, gt=0)
    max_no_speech_share: float = Field(0.2, ge=0, le=1)


class QualityGateParams(_Section):
    """What a model must reach on the test speakers to be promoted (``ser.serve.gate``)."""

    min_test_uar: float = Field(0.30, ge=0, le=1)


class MlflowParams(_Section):
    experiment: str = Field("ser", min_length=1)
    registered_model: str = Field("ser-emotion", min_length=1)


class Params(_Section):
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    audio: AudioParams = AudioParams()
    augment: AugmentParams = AugmentParams()
    features: FeatureParams = FeatureParams()
    frames: FrameParams = FrameParams()
    model: ModelParams = ModelParams()
    preprocessing: PreprocessingParams = PreprocessingParams()
    seed_cnn: SeedCnnParams = SeedCnnParams()
    spectrogram_cnn: SpectrogramCnnParams = SpectrogramCnnParams()
    linear: LinearParams = LinearParams()
    fusion: FusionParams = FusionParams()
    train: TrainParams = TrainParams()
    tune: TuneParams = TuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    quality_gate: QualityGateParams = QualityGateParams()
    mlflow: MlflowParams = MlflowParams()
    speech: SpeechParams = SpeechParams()
    calibration: CalibrationParams = CalibrationParams()
    monitor: MonitorParams = MonitorParams()

    @model_validator(mode="after")
    def _frames_below_nyquist(self) -> Params:
        nyquist = self.audio.sample_rate / 2
        if self.frames.fmax is not None and self.frames.fmax > nyquist:
            raise ValueError(
                f"frames.fmax ({self.frames.fmax:g} Hz) is above the Nyquist frequency of "
                f"audio.sample_rate ({nyquist:g} Hz)"
            )
        return self


def _describe(error: ValidationError, source: Path) -> str:
    lines = [f"{source}: invalid parameters"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        reason = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {reason}")
    return "\n".join(lines)


def parse_params(raw: object, source: Path = DEFAULT_PARAMS) -> Params:
    """Validate a parsed params mapping; raise ConfigError naming each bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    return parse_params(raw if raw is not None else {}, path)


def flatten(params: BaseModel, prefix: str = "") -> dict[str, object]:
    """Flatten params into dotted keys (``train.epochs``) for MLflow."""
    flat: dict[str, object] = {}
    for name, value in params:
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            flat.update(flatten(value, f"{key}."))
        elif isinstance(value, (list, tuple)):
            flat[key] = ",".join(str(item) for item in value)
        else:
            flat[key] = str(value) if isinstance(value, Path) else value
    return flat
