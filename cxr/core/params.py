"""params.yaml, validated once on load into frozen typed objects, and the run settings.

Imports no TensorFlow, scikit-learn, SciPy or model code: the names it checks come from
cxr.core.registry, so every stage validates all of params.yaml in a fraction of a second.
Each field's `description` is the one documentation of its key: docs/params.md is generated
from these models (tests/params_doc.py), so a meaning is written here and nowhere else.
"""

from __future__ import annotations

import codecs
import copy
import difflib
import math
import re
import string
import urllib.parse
from collections.abc import Mapping
from pathlib import Path, PureWindowsPath
from typing import Any, ClassVar, Literal, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from cxr.core.errors import ParamsError, PipelineError
from cxr.core.registry import (
    PHANTOM_CLASSES,
    WEIGHT_CHOICES,
    googlenet_aux_problem,
    image_size_problem,
    is_baseline,
    model_problem,
)


class Section(BaseModel):
    """A params section: immutable, and an unknown key is an error rather than silently ignored."""

    # strict: YAML `yes` or `true` must not pass as an epoch count.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class SyntheticParams(Section):
    """The embedded phantom generator used when data.source is `synthetic`."""

    counts: dict[str, int] = Field(
        description="phantoms per class; imbalanced on purpose, so class weights matter",
        json_schema_extra={
            "allowed": f"mapping of class ({', '.join(PHANTOM_CLASSES)}) to a count >= 0, "
            "at least two of them positive"
        },
    )
    image_size: int = Field(ge=32, le=1024, description="side of each phantom in pixels")
    difficulty: float = Field(ge=0.0, le=1.0, description="lesion contrast: 0 subtle .. 1 obvious")
    seed: int = Field(description="the phantoms' own seed: the same seed draws the same bytes")
    exposure: float = Field(
        gt=0.0,
        le=4.0,
        description="detector gain on every intensity before 8-bit rounding: phantoms as "
        "another scanner would take them (e.g. 1.3); 1.0 = as drawn",
    )
    positioning: float = Field(
        ge=0.0,
        le=4.0,
        description="spread of the patients' pose: the random shift (+-3% of the side), tilt "
        "(+-7 deg) and scale (0.92-1.06) of 1.0 times this, so at 3 a chest is shifted up to "
        "9%, tilted up to 21 deg and scaled 0.78-1.20; the findings then sit in different "
        "pixels on every film, which a pixel classifier cannot follow and a CNN can",
    )
    format: Literal["png", "dicom"] = Field(
        description="png (<class>/<class>_<index>.png) or dicom: the same pixels as DICOM files "
        "of fake patients (2-4 films each, <class>/patient<number>-<n>[.dcm]; 12/16-bit, "
        "MONOCHROME1/2, rescale and window, uncompressed, RLE, JPEG-LS and JPEG 2000 lossless) "
        "that decode to the PNGs' pixels exactly"
    )

    @field_validator("counts")
    @classmethod
    def _known_classes(cls, counts: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(counts) - set(PHANTOM_CLASSES))
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}; allowed: {', '.join(PHANTOM_CLASSES)}")
        if any(count < 0 for count in counts.values()):
            raise ValueError("counts must be >= 0")
        if sum(1 for count in counts.values() if count > 0) < 2:
            raise ValueError("at least two classes need a positive count")
        return counts


# data.csv.dicom_key: the header attributes a label table may name files by (cxr.core.dicom reads
# them); AccessionNumber is read only to match, never written anywhere.
DicomKey = Literal[
    "", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber"
]


class CsvParams(Section):
    """The metadata table of the csv layout: which file, and which columns say what."""

    file: str = Field(
        description="the metadata table, a path inside the dataset root (a table outside is "
        "refused: put it in the source, so DVC tracks it); for a dicomweb+ source, which has no "
        "table, a path in the checkout; '' = none"
    )
    file_column: str = Field(min_length=1, description="the table's column naming each image file")
    file_template: str = Field(
        description="each row's image from its values when the table has no file column, "
        "relative to data.csv.images_dir, e.g. images/{patientid}.*; the * must match exactly one "
        "file, else the row is dropped and listed in data/interim/ingest_rejected.csv; "
        "'' = read file_column"
    )
    dicom_key: DicomKey = Field(
        description="join rows to DICOM files by this header attribute instead of a file name: "
        "file_column then holds its value, and every DICOM file under images_dir whose header "
        "holds it takes the row's label (e.g. StudyInstanceUID for labels mined from reports, "
        "one row per study); a file two rows give different labels is an error; "
        "not together with file_template; '' = by file name"
    )
    label_column: str = Field(
        min_length=1,
        description="the column of each image's label; a row with a blank label is dropped "
        "unless data.label_map maps _blank_",
    )
    group_column: str = Field(
        description="the column of each image's group (e.g. patient id): a group never "
        "straddles splits; '' = no groups"
    )
    images_dir: str = Field(
        description="the folder file_column and file_template are relative to, inside the "
        "dataset; '' = the dataset root"
    )
    encoding: str = Field(
        min_length=1,
        description="the table's text encoding: auto = UTF-8, else cp1252, else latin-1 (one "
        "warning naming the file), or any Python codec, e.g. utf-16",
        json_schema_extra={"allowed": "auto or a Python codec name"},
    )

    @field_validator("file", "file_template", "images_dir")
    @classmethod
    def _inside_the_dataset(cls, path: str, info: ValidationInfo) -> str:
        # A table or folder outside the source would not be copied into data/raw, so DVC
        # would not see it change; it has to travel with the images.
        parts = path.replace("\\", "/").split("/")
        if path.startswith(("/", "\\", "~")) or PureWindowsPath(path).drive or ".." in parts:
            what = "the table" if info.field_name == "file" else "it"
            raise ValueError(
                "must be a path inside the dataset (no leading /, ~ or '..'); put "
                f"{what} inside the data.source folder or archive, so DVC tracks it"
            )
        return path

    @field_validator("file_template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        if not template:
            return template
        try:
            fields = [
                (name, spec, conversion)
                for _text, name, spec, conversion in string.Formatter().parse(template)
                if name is not None
            ]
        except ValueError as error:
            raise ValueError(f"not a template ({error}); write {{{{ and }}}} for a brace") from None
        if not fields or any(not name or spec or conversion for name, spec, conversion in fields):
            raise ValueError(
                "needs one or more plain {column} fields (no format spec), e.g. "
                "images/{patientid}.*"
            )
        return template

    @field_validator("dicom_key")
    @classmethod
    def _file_by_one_means(cls, dicom_key: str, info: ValidationInfo) -> str:
        if dicom_key and info.data.get("file_template"):
            raise ValueError(
                f"data.csv.file_template = {info.data['file_template']!r} is set too; rows find "
                "their files by one of them, set the other to ''"
            )
        return dicom_key

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        if encoding != "auto":
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValueError(
                    "unknown encoding; use auto or a Python codec such as utf-8, cp1252, latin-1"
                ) from None
        return encoding


class DicomParams(Section):
    """Which DICOM files ingest keeps, by their header; files of other formats are all kept."""

    modalities: list[str] = Field(
        description="keep the DICOM files whose Modality is one of these, e.g. [DX, CR] for "
        "radiographs; the others are left out, counted in metrics/summary/ingest.json "
        "(filtered_files) and listed in data/interim/ingest_rejected.csv; [] = all",
        json_schema_extra={"allowed": "DICOM code strings (upper case), e.g. DX, CR, CT"},
    )
    views: list[str] = Field(
        description="keep the DICOM files whose ViewPosition is one of these, e.g. [PA, AP]; "
        "a file without a ViewPosition is left out too; [] = all",
        json_schema_extra={"allowed": "DICOM code strings (upper case), e.g. PA, AP, LL"},
    )

    @field_validator("modalities", "views")
    @classmethod
    def _code_strings(cls, codes: list[str]) -> list[str]:
        for code in codes:
            if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", code):
                raise ValueError(
                    f"{code!r} is not a DICOM code string (upper case letters, digits, _ or "
                    f"space, at most 16), e.g. {code.strip().upper()[:16] or 'PA'!r}"
                )
        if len(set(codes)) < len(codes):
            raise ValueError("names a code twice")
        return codes


# Series attributes a study search cannot match (QIDO-RS matches study and patient attributes at
# the study level; a server ignores the others or finds nothing): their place is series_query.
SERIES_KEYWORDS = (
    "Modality",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "BodyPartExamined",
)


def _qido_filters(filters: Any, key: str) -> Any:
    """QIDO-RS search filters as text: DICOM keywords or 8-digit tags to non-empty match values."""
    if not isinstance(filters, dict):
        return filters
    # Imported here: pydicom takes a third of a second, paid only when a query is given.
    from pydicom.datadict import keyword_dict

    checked = {}
    for name, value in filters.items():
        name = str(name)
        if name not in keyword_dict and not re.fullmatch(r"[0-9A-Fa-f]{8}", name):
            close = difflib.get_close_matches(name, keyword_dict, n=1)
            if name.lower() in ("limit", "offset"):
                hint = "the number of studies is data.dicomweb.max_studies"
            else:
                hint = f"did you mean {close[0]}?" if close else "e.g. StudyDescription, 00081030"
            raise ValueError(f"{name!r} is not a DICOM keyword (PS3.6) nor an 8-digit tag; {hint}")
        if key == "query" and name in SERIES_KEYWORDS:
            raise ValueError(
                f"{name} is a series attribute, which a study search does not match: put it in "
                "data.dicomweb.series_query"
                + (" (or use ModalitiesInStudy here)" if name == "Modality" else "")
            )
        # YAML reads StudyDate: 20200101 as a number; QIDO-RS values are text.
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{name}: {value!r} is not a match value; give text, e.g. DX, *CHEST* or "
                "20200101-20201231 (an empty value matches everything: leave the key out)"
            )
        checked[name] = value
    return checked


class DicomwebParams(Section):
    """A DICOMweb source (data.source dicomweb+http(s)://...): which studies and series to fetch."""

    query: dict[str, str] = Field(
        description="QIDO-RS filters of the studies to fetch (GET <server>/studies?...): study "
        "or patient attributes by DICOM keyword, e.g. {ModalitiesInStudy: DX, StudyDescription: "
        "'*CHEST*', StudyDate: 20200101-20201231}; {} = every study",
        json_schema_extra={"allowed": "mapping of DICOM keyword (or 8-digit tag) to match value"},
    )
    series_query: dict[str, str] = Field(
        description="QIDO-RS filters of each matching study's series, e.g. {Modality: DX, "
        "BodyPartExamined: CHEST}; every instance of a matching series is fetched; {} = every "
        "series",
        json_schema_extra={"allowed": "mapping of DICOM keyword (or 8-digit tag) to match value"},
    )
    max_studies: int = Field(
        ge=1,
        description="fetch at most this many matching studies (the first in the server's "
        "order); each instance is fetched once into data/downloads/dicomweb-<hash of the URL and "
        "queries>/ and reused, so raising it fetches only the new studies",
    )

    @field_validator("query", "series_query", mode="before")
    @classmethod
    def _filters(cls, filters: Any, info: ValidationInfo) -> Any:
        return _qido_filters(filters, str(info.field_name))


DICOMWEB_PREFIX = "dicomweb+"


def _check_dicomweb_url(url: str) -> None:
    """Refuse a DICOMweb URL that is not http(s)://host/..., or that holds credentials."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(
            "write dicomweb+https://<host>[:port]/<DICOMweb root>, e.g. "
            "dicomweb+http://localhost:8042/dicom-web"
        )
    if parsed.username or parsed.password:
        # params.yaml lands in git and MLflow: a password there would be published.
        raise ValueError(
            "holds a user name or password; set the environment variable CXR_DICOMWEB_TOKEN "
            "to a bearer token instead"
        )
    if parsed.query or parsed.fragment:
        raise ValueError("ends in ?... or #...: filters go in data.dicomweb.query")


class DataParams(Section):
    """Where ingest takes the images from, and how their folders say the class."""

    source: str = Field(
        min_length=1,
        description="where the images come from: synthetic (the embedded phantoms), a folder, "
        "a .zip / .tar / .tar.gz / .tgz archive, an https:// URL of one, "
        "kaggle:<owner>/<dataset>, or a DICOMweb server, dicomweb+https://<host>/<DICOMweb root> "
        "(data.dicomweb); relative paths are relative to the checkout",
    )
    sha256: str = Field(
        description="required for a URL source: the archive's sha256; the download is verified "
        "and kept in data/downloads, never fetched twice",
        json_schema_extra={"allowed": "'' or 64 hex digits"},
    )
    dicomweb: DicomwebParams = Field(
        description="what a dicomweb+ source fetches (QIDO-RS search, then WADO-RS retrieve of "
        "each instance); its labels come from data.csv.file, a table in the checkout (e.g. one "
        "row per study with data.csv.dicom_key StudyInstanceUID); a server that needs a token "
        "gets the environment variable CXR_DICOMWEB_TOKEN as Authorization: Bearer, never a param"
    )
    csv: CsvParams = Field(description="the csv layout: a metadata table naming each file")
    # After csv, so its validator can see the csv section.
    layout: Literal["auto", "class_folders", "split_folders", "radiography", "binary", "csv"] = (
        Field(
            description="how the folders say the class: auto (detected), class_folders "
            "(<root>/<class>/*), split_folders (<root>/{train,test[,val]}/<class>/*), "
            "radiography (<class>/images/*), binary (folders 0/ and 1/, with data.label_map) "
            "or csv (data.csv)"
        )
    )
    label_map: dict[str, str] = Field(
        description="raw or canonical label -> class, e.g. {'0': normal, '1': covid}; matches "
        "the label as written, folded, or by its canonical name; the key _blank_ (or '' in "
        "YAML) maps blank labels; required for 0 / 1 folders",
        json_schema_extra={"allowed": "mapping of label to class name"},
    )
    classes: list[str] = Field(description="classes to keep (canonical names); [] = all")
    group_pattern: str = Field(
        description="regular expression on each file's path relative to the dataset root; its "
        "first group is the patient / study / paper, kept in one split; an unmatched file is a "
        "group of its own (warning); not together with data.csv.group_column; '' = none",
        json_schema_extra={"allowed": "'' or a regular expression with a capturing group"},
    )
    dicom: DicomParams = Field(
        description="DICOM files kept by their header (files of other formats are all kept); "
        "each DICOM file's patient is its group unless group_pattern or csv.group_column says"
    )
    synthetic: SyntheticParams = Field(
        description="the embedded chest-radiograph phantoms, used when data.source is synthetic"
    )
    # Checked on an archive's member table before anything is written: a few hundred KB can
    # declare gigabytes (a zip bomb), and data/raw plus its DVC cache copy would hold them twice.
    max_extract_bytes: int = Field(
        ge=1,
        description="an archive source whose members add up to more bytes is refused before "
        "extracting",
    )
    max_extract_files: int = Field(
        ge=1,
        description="an archive source with more members (files and folders) is refused "
        "before extracting",
    )

    # The label_map key of a blank label: `''` cannot be typed on the `dvc exp run -S` line
    # (Hydra's override grammar has no quoted or empty mapping keys); `''` in YAML means it too.
    BLANK_LABEL: ClassVar[str] = "_blank_"

    @field_validator("source")
    @classmethod
    def _kaggle_handle(cls, source: str) -> str:
        if source.startswith("kaggle:") and not re.fullmatch(
            r"kaggle:[\w.-]+/[\w.-]+(/versions/\d+)?", source
        ):
            raise ValueError(
                "write kaggle:<owner>/<dataset>, e.g. kaggle:pranavraikokte/covid19-image-dataset"
            )
        if source.startswith(DICOMWEB_PREFIX):
            _check_dicomweb_url(source.removeprefix(DICOMWEB_PREFIX))
        return source

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, sha256: str, info: ValidationInfo) -> str:
        if sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise ValueError("must be '' or the 64 hex digits of the archive's sha256")
        if not sha256 and str(info.data.get("source", "")).startswith(("http://", "https://")):
            raise ValueError(
                "a URL source needs the sha256 of its archive (e.g. from `sha256sum`), "
                "so the download is verified"
            )
        return sha256.lower()

    @field_validator("layout")
    @classmethod
    def _csv_table_given(cls, layout: str, info: ValidationInfo) -> str:
        csv = info.data.get("csv")
        if layout == "csv" and csv is not None and not csv.file:
            raise ValueError("needs data.csv.file, the metadata table relative to the dataset")
        return layout

    @field_validator("label_map", mode="before")
    @classmethod
    def _numeric_keys_as_text(cls, label_map: Any) -> Any:
        # YAML reads `0: normal` with an int key; folder names and CSV labels are text.
        if isinstance(label_map, dict):
            label_map = {
                str(key) if isinstance(key, int) and not isinstance(key, bool) else key: value
                for key, value in label_map.items()
            }
            # One spelling of the blank label, so logged params never hold an empty key.
            if "" in label_map:
                if cls.BLANK_LABEL in label_map:
                    raise ValueError(f"'' and {cls.BLANK_LABEL!r} both map the blank label")
                label_map[cls.BLANK_LABEL] = label_map.pop("")
        return label_map

    @field_validator("label_map")
    @classmethod
    def _named_classes(cls, label_map: dict[str, str]) -> dict[str, str]:
        for raw, name in label_map.items():
            if not any(character.isalpha() for character in name):
                raise ValueError(f"{raw!r} -> {name!r}: a class name needs a letter")
        return label_map

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: list[str]) -> list[str]:
        if not all(any(character.isalpha() for character in name) for name in classes):
            raise ValueError("class names need a letter")
        if len(classes) == 1:
            raise ValueError("a classifier needs at least two classes; use [] for all")
        return classes

    @field_validator("group_pattern")
    @classmethod
    def _one_capturing_group(cls, pattern: str) -> str:
        if not pattern:
            return pattern
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"not a regular expression ({error})") from None
        if compiled.groups < 1:
            raise ValueError(
                "needs a capturing group (...) whose text is the group, e.g. (\\d{8})_\\d+\\.png$"
            )
        return pattern

    @model_validator(mode="after")
    def _dicomweb_labels(self) -> DataParams:
        if self.source.startswith(DICOMWEB_PREFIX) and not self.csv.file:
            raise CrossKeyError(
                "data.csv.file",
                self.csv.file,
                f"data.source = {self.source!r} has no class folders: name a label table in the "
                "checkout, e.g. labels.csv with columns StudyInstanceUID,label and "
                "data.csv.dicom_key StudyInstanceUID",
            )
        return self

    @model_validator(mode="after")
    def _one_source_of_groups(self) -> DataParams:
        if self.group_pattern and self.csv.group_column:
            raise CrossKeyError(
                "data.group_pattern",
                self.group_pattern,
                f"data.csv.group_column = {self.csv.group_column!r} is set too; groups come "
                "from one of them, set the other to ''",
            )
        return self


# An external dataset's options left out take these values: the defaults of params.yaml's
# `data` section (tests/core/test_params.py checks the two agree), never the training data's own
# values, whose layout, table or label map describe another collection.
EXTERNAL_DATA_DEFAULTS: dict[str, Any] = {
    "sha256": "",
    "dicomweb": {"query": {}, "series_query": {}, "max_studies": 100},
    "layout": "auto",
    "label_map": {},
    "classes": [],
    "group_pattern": "",
    "csv": {
        "file": "",
        "file_column": "file",
        "file_template": "",
        "dicom_key": "",
        "label_column": "label",
        "group_column": "",
        "images_dir": "",
        "encoding": "auto",
    },
    "dicom": {"modalities": [], "views": []},
    "synthetic": {
        "counts": {"covid": 120, "normal": 200, "viral_pneumonia": 90},
        "image_size": 128,
        "difficulty": 0.5,
        "seed": 2026,
        "exposure": 1.0,
        "positioning": 3.0,
        "format": "png",
    },
    "max_extract_bytes": 20_000_000_000,
    "max_extract_files": 2_000_000,
}
# evaluate.external.<name>: a name that is safe in a DVC stage name, a path and an MLflow metric.
EXTERNAL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
# compare.rank_by: the internal test metrics, or external_<name>_<one of these>.
RANK_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "test_balanced_accuracy")
EXTERNAL_RANK_METRICS = ("accuracy", "f1_macro", "roc_auc_ovr", "balanced_accuracy")
# compare.rank_by: a test metric pooled over every fold of a cross-validation design.
POOLED_PREFIX = "cv_"
POOLED_RANK_METRICS = tuple(f"{POOLED_PREFIX}{name}" for name in RANK_METRICS)


def is_pooled(rank_by: str) -> bool:
    """Whether compare.rank_by names a figure pooled over the folds of a cross-validation."""
    return rank_by.startswith(POOLED_PREFIX)


def external_metric(dataset: str, metric: str) -> str:
    """The MLflow and leaderboard name of an external dataset's metric."""
    return f"external_{dataset}_{metric}"


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `defaults`, mappings merged key by key (label_map and counts replaced whole)."""
    merged = dict(defaults)
    for key, value in given.items():
        sections = key in ("csv", "dicom", "dicomweb", "synthetic") and isinstance(value, dict)
        merged[key] = _merged(defaults[key], value) if sections else value
    return merged


class ExternalDataParams(DataParams):
    """One external dataset (evaluate.external.<name>): `source` and any option of `data`."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, raw: Any) -> Any:
        # A user writes only what differs from the defaults, e.g. {source: ~/site-b}.
        if not isinstance(raw, dict):
            return raw
        return _merged(copy.deepcopy(EXTERNAL_DATA_DEFAULTS), raw)


# build.dicom.window's named CT windows: (centre, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
}
DICOM_WINDOW_NAMES = ("auto", "full", *CT_WINDOWS)
# A window as decoding takes it: one of DICOM_WINDOW_NAMES, or (centre, width).
DicomWindow = str | tuple[float, float]


def dicom_window(value: Any) -> DicomWindow:
    """build.dicom.window as decoding takes it: a name, or (centre, width); ValueError if bad."""
    if isinstance(value, str) and value in DICOM_WINDOW_NAMES:
        return value
    numbers = list(value) if isinstance(value, list | tuple) else []
    if len(numbers) != 2 or not all(
        isinstance(number, int | float) and not isinstance(number, bool) for number in numbers
    ):
        raise ValueError(
            f"must be {', '.join(DICOM_WINDOW_NAMES)} or [centre, width], e.g. [-600, 1500]"
        )
    centre, width = float(numbers[0]), float(numbers[1])
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
        raise ValueError("[centre, width] needs finite numbers and a width > 0")
    return (centre, width)


class DicomBuildParams(Section):
    """How the stored values of a DICOM file become the cache's 8-bit gray (its VOI)."""

    window: str | list[float] = Field(
        description="the values shown from black to white, after the modality LUT (Hounsfield "
        "units for CT): auto (the file's VOI LUT, else its first window centre / width, else "
        "the image's own range), full (the whole stored range), lung (centre -600, width 1500), "
        "mediastinum (50, 350) or [centre, width]; train records it, so predict and the served "
        "model decode DICOM files alike",
        json_schema_extra={
            "allowed": f"{', '.join(DICOM_WINDOW_NAMES)} or [centre, width] with width > 0"
        },
    )

    @field_validator("window", mode="before")
    @classmethod
    def _name_or_centre_and_width(cls, window: Any) -> Any:
        setting = dicom_window(window)
        return setting if isinstance(setting, str) else list(setting)

    @property
    def decoding_window(self) -> DicomWindow:
        """The window as decoding takes it: a name, or (centre, width)."""
        return dicom_window(self.window)


class BuildParams(Section):
    """Decoding every image once into the pixel cache, and the exploration plots."""

    cache_size: int = Field(
        ge=32,
        le=1024,
        description="side of the cached gray squares; train.image_size must be <= it",
    )
    resize: Literal["pad", "crop", "stretch"] = Field(
        description="how a non-square image becomes the square: pad (aspect ratio kept, black "
        "borders, centred), crop (the centre square) or stretch (each side scaled on its own); "
        "predict and the served model square new images the same way"
    )
    # Pillow refuses images above 2 x 89,478,485 pixels as decompression bombs; the build's
    # own limit stays below its warning threshold so only this limit ever applies.
    max_pixels: int = Field(
        ge=1,
        le=89_478_485,
        description="larger images are rejected on their header, before decoding (listed in "
        "data/interim/rejected.csv); a file over 16 bytes a pixel plus 64 MiB is rejected on "
        "its size, unread",
    )
    histogram_images_per_class: int = Field(
        ge=1, description="images per class sampled for the intensity histograms"
    )
    histogram_bins: int = Field(ge=2, le=256, description="bins of the intensity histograms")
    dicom: DicomBuildParams = Field(
        description="DICOM files (found by content: the DICM marker), decoded with pydicom"
    )


class SplitParams(Section):
    """Leakage-safe stratified train / val / test split and optional undersampling of train."""

    val_fraction: float = Field(
        gt=0.0,
        lt=1.0,
        description="share of the units in val (of the given train when the source has a test "
        "folder); val_fraction + test_fraction < 1",
    )
    test_fraction: float = Field(
        gt=0.0, lt=1.0, description="share of the units in test (unused when folds > 0)"
    )
    undersample: bool = Field(
        description="random undersampling of train to the smallest class (throws images away; "
        "train.class_weight keeps every image)"
    )
    resplit: bool = Field(
        description="ignore the source's own train / test folders and split afresh"
    )
    duplicates: Literal["drop-from-test", "keep", "fail"] = Field(
        description="copies of one image across the given train and test splits: drop them "
        "from test, keep them (a warning) or fail"
    )
    near_duplicate_distance: int = Field(
        ge=0,
        le=32,
        description="also keep images within this perceptual-hash distance (bits) together; "
        "0 = off",
    )
    folds: int = Field(
        ge=0,
        le=20,
        description="K-fold cross-validation of a fresh split: the units (groups, copies, "
        "near-duplicates) are dealt into K stratified folds by seed, fold split.fold is test "
        "and val a val_fraction share of the rest; a source with its own test folder needs "
        "resplit: true; 0 = one split",
    )
    fold: int = Field(
        ge=0,
        description="the test fold when folds > 0 (0 .. folds - 1); sweep them all with "
        "dvc exp run --queue -S split.folds=5 -S 'split.fold=range(0,5)' (and dvc queue "
        "start): compare pools the folds into the cross-validated leaderboard",
    )

    @property
    def test_share(self) -> float:
        """The share of units held out for test: one fold, or test_fraction."""
        return 1.0 / self.folds if self.folds else self.test_fraction

    @model_validator(mode="after")
    def _positive_train_share(self) -> SplitParams:
        if self.folds == 1:
            raise ValueError("folds = 1: use 0 (one split by test_fraction) or 2 and more")
        if self.fold >= max(self.folds, 1):
            allowed = f"0 .. {self.folds - 1}" if self.folds else "0 while folds = 0"
            raise ValueError(f"fold = {self.fold}: must be {allowed}")
        if self.val_fraction + self.test_share >= 1.0:
            held = "1 / folds" if self.folds else "test_fraction"
            raise ValueError(
                f"val_fraction + {held} = {self.val_fraction + self.test_share:g}: "
                "must be < 1 to leave a positive train share"
            )
        return self


class ContrastiveAugmentParams(Section):
    """The random views pre-training compares: each image is drawn twice through these layers."""

    crop_area: float = Field(
        gt=0.0,
        le=1.0,
        description="smallest share of the image a random crop keeps, zoomed back to the full "
        "side (keras-io's min_area, 0.25 there on photographs); 1 = no crop",
    )
    rotation: float = Field(
        ge=0.0, le=0.5, description="random rotation, fraction of a full turn (0.03: up to 11 deg)"
    )
    translation: float = Field(
        ge=0.0, le=0.5, description="random shift, fraction of the image side"
    )
    horizontal_flip: bool = Field(
        description="random left-right flip (the heart then sits on either side)"
    )
    contrast: float = Field(ge=0.0, lt=1.0, description="random contrast factor")
    brightness: float = Field(
        ge=0.0, le=1.0, description="random brightness shift, fraction of the 0-255 range"
    )


class PretrainParams(Section):
    """Self-supervised pre-training of the backbone on unlabelled images (stage pretrain)."""

    enabled: bool = Field(
        description="pre-train the backbone without labels (SimCLR-style contrastive learning) "
        "and start train from those weights; false = the stage writes only "
        "pretrained/pretrain.json saying so; a baseline model is never pre-trained"
    )
    epochs: int = Field(ge=1, description="passes over the pre-training images")
    batch_size: int = Field(
        ge=2,
        description="images per batch; every other image of the batch is a negative, so larger "
        "is better; the last partial batch of an epoch is dropped",
    )
    learning_rate: float = Field(
        gt=0.0, description="AdamW's rate, decayed by a cosine to 0 over all epochs"
    )
    weight_decay: float = Field(ge=0.0, lt=1.0, description="AdamW's decoupled weight decay")
    temperature: float = Field(
        gt=0.0,
        le=10.0,
        description="NT-Xent temperature: cosine similarities are divided by it before the "
        "softmax (lower = harder negatives)",
    )
    projection_units: int = Field(
        ge=1,
        description="output width of the projection head (two Dense layers on the pooled "
        "features), used only by the loss and not kept",
    )
    positives: Literal["group", "self"] = Field(
        description="the positive pair: group = an image and another image of its group "
        "(patient / study / paper, the split's group column; MICLe, Azizi et al. 2021), or the "
        "image itself when its group has one image; self = two views of one image (SimCLR)"
    )
    images: Literal["train_val", "all"] = Field(
        description="the source's images it learns from, labels unused: train_val = the train "
        "and val splits (the test split is never seen); all = every decoded image, test "
        "included (transductive: the test images shape the features, so the test figures "
        "are no longer those of unseen images)"
    )
    extra_folders: list[str] = Field(
        description="folders of unlabelled images added to the pre-training images, e.g. a "
        "hospital's unlabelled studies; every file under them (hidden ones skipped) decoded as "
        "build decodes (any format build reads, build.resize, build.dicom.window); relative "
        "paths are relative to the checkout; DVC sees this list, not the folders' content; "
        "[] = none",
        json_schema_extra={"allowed": "list of folder paths"},
    )
    augment: ContrastiveAugmentParams = Field(
        description="the random views, both drawn by the same layers; no colour jitter beyond "
        "brightness and contrast (the images are gray)"
    )

    @field_validator("extra_folders")
    @classmethod
    def _distinct_folders(cls, folders: list[str]) -> list[str]:
        if any(not folder.strip() for folder in folders):
            raise ValueError("holds an empty path; give each folder's path, or [] for none")
        if len(set(folders)) < len(folders):
            raise ValueError("names a folder twice")
        return folders


class HeadParams(Section):
    """Classification head on the backbone: pool, then hidden Dense layers, then softmax.

    Each hidden layer is Dense (ReLU, L2) -> BatchNorm (if batch_norm) -> Dropout; without
    hidden layers the dropout follows the pooling. L2 applies to every head Dense layer.
    """

    pooling: Literal["avg", "max", "flatten"] = Field(
        description="how the backbone's feature map becomes a vector"
    )
    dense_units: list[int] = Field(
        description="hidden Dense (ReLU) widths, e.g. [1024] or [512, 256]; [] = none"
    )
    batch_norm: bool = Field(description="BatchNormalization after each hidden Dense layer")
    dropout: float = Field(
        ge=0.0,
        lt=1.0,
        description="dropout rate after each hidden layer (after the pooling when there is none)",
    )
    l2: float = Field(
        ge=0.0, description="L2 kernel regularisation of every Dense layer of the head; 0 = none"
    )
    googlenet_aux: bool = Field(
        description="model googlenet only, image_size >= 65: train with the paper's two "
        "auxiliary classifiers (loss weight 0.3)"
    )

    @field_validator("dense_units", mode="before")
    @classmethod
    def _one_layer_shorthand(cls, units: Any) -> Any:
        # `-S train.head.dense_units=256` is one hidden layer; 0 is none (the old int form).
        if isinstance(units, int) and not isinstance(units, bool):
            return [] if units == 0 else [units]
        return units

    @field_validator("dense_units")
    @classmethod
    def _positive_widths(cls, units: list[int]) -> list[int]:
        if any(width < 1 for width in units):
            raise ValueError("every hidden layer needs >= 1 unit; use [] for no hidden layer")
        return units


class AugmentParams(Section):
    """Random augmentation layers inside the model (active only while training)."""

    horizontal_flip: bool = Field(description="random left-right flip (an X-ray setting to try)")
    rotation: float = Field(
        ge=0.0, le=0.5, description="random rotation, fraction of a full turn, e.g. 0.03"
    )
    zoom: float = Field(ge=0.0, lt=1.0, description="random zoom factor, e.g. 0.1")
    translation: float = Field(
        ge=0.0, le=0.5, description="random shift, fraction of the image side, e.g. 0.05"
    )
    contrast: float = Field(ge=0.0, lt=1.0, description="random contrast factor, e.g. 0.1")
    brightness: float = Field(
        ge=0.0, le=1.0, description="random brightness shift, fraction of the 0-255 range, e.g. 0.1"
    )


class CosineParams(Section):
    """Cosine annealing per step (train.schedule: cosine), optionally warm and restarting."""

    warmup_epochs: int = Field(
        ge=0,
        description="linear warmup from 0 to the phase's rate (not together with restarts)",
    )
    restart_epochs: int = Field(
        ge=0, description="first restart period (SGDR); 0 = one decay over the phase"
    )
    restart_multiplier: float = Field(ge=1.0, description="each period is this times the last")
    final_fraction: float = Field(ge=0.0, lt=1.0, description="floor, as a fraction of the rate")

    @model_validator(mode="after")
    def _warmup_or_restarts(self) -> CosineParams:
        # keras' CosineDecayRestarts has no warmup; a custom schedule would need registering
        # wherever the saved model is loaded.
        if self.warmup_epochs > 0 and self.restart_epochs > 0:
            raise ValueError(
                "warmup_epochs and restart_epochs cannot both be > 0; set one of them to 0"
            )
        return self


class AdaptiveParams(Section):
    """The seed's adaptive rate (train.schedule: adaptive): train accuracy, then val loss."""

    accuracy_threshold: float = Field(
        gt=0.0, le=1.0, description="watch train accuracy until it reaches this, then val loss"
    )
    patience: int = Field(ge=1, description="epochs without improvement before a reduction")
    factor: float = Field(gt=0.0, lt=1.0, description="the rate is multiplied by this")
    stop_patience: int = Field(
        ge=1, description="stop after this many reductions without improvement"
    )


class BaselineParams(Section):
    """Classical scikit-learn baselines (model: pixel_logreg, pixel_svm, pixel_rf)."""

    image_size: int = Field(
        ge=8, le=256, description="side of the gray images, flattened into the pixel rows"
    )
    pca_components: int = Field(ge=0, description="PCA components before the classifier; 0 = none")
    c: float = Field(gt=0.0, description="inverse regularisation of logreg and svm")
    trees: int = Field(ge=1, description="trees of pixel_rf")


MEMBER_SEED_STEP = 100  # member k of a seed ensemble trains with seed + 100 k


def member_seed(seed: int, member: int) -> int:
    """The seed of member `member` of a seed ensemble (train.members); member 0 has `seed`."""
    return seed + MEMBER_SEED_STEP * member


class TrainParams(Section):
    """Training of one model: a Keras backbone in one or two phases, or a baseline."""

    image_size: int = Field(
        ge=32,
        le=1024,
        description="model input side; the pixel cache is resized to it (<= build.cache_size)",
    )
    batch_size: int = Field(
        ge=1, description="the global batch: on several devices each replica gets its share"
    )
    epochs: int = Field(
        ge=1, description="frozen-backbone phase, or all epochs when training from scratch"
    )
    learning_rate: float | Literal["auto"] = Field(
        description="the optimizer's rate in that phase: auto = 0.001 with adam or adamw, 0.01 "
        "with sgd",
        json_schema_extra={"allowed": "auto or a number > 0"},
    )
    optimizer: Literal["auto", "adam", "adamw", "sgd"] = Field(
        description="adam, adamw (decoupled weight decay) or sgd (Nesterov momentum 0.9, "
        "decoupled weight decay); auto = adamw, except sgd for the backbones that measured "
        "better with it from scratch (cxr/core/registry.py SCRATCH_OPTIMIZERS: mobilenetv2, "
        "resnet18, resnet50); train logs the one it used as the MLflow tag optimizer"
    )
    weight_decay: float = Field(
        ge=0.0,
        lt=1.0,
        description="decoupled weight decay of adamw or sgd (an error with adam); 0 = none",
    )
    label_smoothing: float = Field(
        ge=0.0,
        lt=0.5,
        description="share of each target spread over the classes (0 = hard targets); the loss "
        "becomes categorical cross-entropy on one-hot labels",
    )
    mixup: float = Field(
        ge=0.0,
        le=1.0,
        description="MixUp alpha (keras.layers.MixUp): each training batch is blended with a "
        "shuffled copy of itself, images and one-hot targets with one Beta(alpha, alpha) weight "
        "per image; val and test images are never mixed; seeded, but a resumed run "
        "(CXR_RESUME) starts the sequence of blends again; 0 = off",
    )
    ema_momentum: float = Field(
        ge=0.0,
        lt=1.0,
        description="moving average of the weights (Adam's use_ema; 0.99: each step adds 1% of "
        "the new weights): validation, early stopping and the checkpoint see the averages and "
        "the saved model holds them; BatchNorm statistics are not averaged; 0 = off",
    )
    members: int = Field(
        ge=1,
        le=20,
        description="seed ensemble: this many networks trained one after another on the same "
        "split, member k with seed + 100 k (exactly the network a run with that seed trains "
        "alone); the saved model averages their probabilities, and training takes members "
        "times as long; 1 = one network",
    )
    fine_tune_epochs: int = Field(
        ge=0, description="second phase, only for a pretrained backbone; 0 = none"
    )
    fine_tune_layers: int = Field(
        ge=0,
        description="top backbone layers unfrozen in the second phase (BatchNorm stays frozen)",
    )
    fine_tune_learning_rate: float = Field(gt=0.0, description="the rate of the second phase")
    weights: str = Field(
        min_length=1,
        description="backbone weights: auto (ImageNet when cached in ~/.keras/models or "
        "downloadable, else from scratch with a warning), imagenet (an error if unavailable), "
        "none, or a weights file; with pretrain.enabled only auto or none, and the backbone "
        "starts from the pre-trained encoder instead",
        json_schema_extra={
            "allowed": f"{', '.join(WEIGHT_CHOICES)} or a .h5 / .keras weights file path"
        },
    )
    early_stopping_patience: int = Field(
        ge=0, description="epochs without a better val_loss before stopping; 0 = never stop early"
    )
    restore_best_weights: bool = Field(
        description="end each phase on its best val_loss epoch's weights; false = the last epoch's"
    )
    time_budget_minutes: float = Field(
        ge=0.0,
        description="stop after the epoch that passes this many minutes of training, over all "
        "phases (per member with train.members); 0 = no limit",
    )
    reduce_lr_patience: int = Field(
        ge=1, description="ReduceLROnPlateau on val_loss (schedule constant): epochs to wait"
    )
    reduce_lr_factor: float = Field(
        gt=0.0, lt=1.0, description="ReduceLROnPlateau: the rate is multiplied by this"
    )
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"] = Field(
        description="auto = float16 compute when every GPU has compute capability >= 7.0 "
        "(under KERAS_BACKEND=jax bfloat16 from 8.0, Ampere); float16 or bfloat16 forced "
        "(also on a CPU); off; the output layer stays float32"
    )
    deterministic: bool = Field(
        description="seeds and op determinism (TensorFlow's, or XLA's deterministic GPU ops "
        "under JAX): same params, same metrics (on a CPU)"
    )
    schedule: Literal["constant", "cosine", "adaptive"] = Field(
        description="the rate schedule: constant (+ ReduceLROnPlateau), cosine (train.cosine) "
        "or adaptive (train.adaptive)"
    )
    cosine: CosineParams = Field(description="schedule cosine: per step, in each phase")
    adaptive: AdaptiveParams = Field(description="schedule adaptive: the seed's scheme")
    class_weight: Literal["none", "balanced"] = Field(
        description="balanced: loss weight n / (classes x count) per class; none: equal"
    )
    cache_features: Literal["auto", "on", "off"] = Field(
        description="train the frozen phase on backbone features computed once: auto = when "
        "pretrained and without augmentation"
    )
    jit_compile: Literal["auto", "on", "off"] = Field(
        description="XLA: auto = on with exactly one GPU (keras skips it where a layer cannot); "
        "under KERAS_BACKEND=jax always on unless off (off: eager steps, for debugging)"
    )
    baseline: BaselineParams = Field(description="model pixel_logreg, pixel_svm or pixel_rf")
    head: HeadParams = Field(
        description="pool -> [Dense (ReLU) -> BatchNorm -> Dropout] per hidden layer -> softmax"
    )
    augment: AugmentParams = Field(
        description="Keras layers inside the model, active only in training; all off by "
        "default, by measurement (README, The default recipe)"
    )

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _auto_or_positive_rate(cls, rate: Any) -> Any:
        number = isinstance(rate, float | int) and not isinstance(rate, bool)
        if rate != "auto" and not (number and math.isfinite(rate) and rate > 0):
            raise ValueError("must be auto or a number > 0, e.g. 0.001")
        return rate

    @model_validator(mode="after")
    def _decay_needs_adamw(self) -> TrainParams:
        if self.optimizer == "adam" and self.weight_decay > 0:
            raise CrossKeyError(
                "train.weight_decay",
                self.weight_decay,
                "needs train.optimizer: adamw or sgd (decoupled decay); set one, or "
                "weight_decay: 0",
            )
        return self

    @field_validator("weights")
    @classmethod
    def _weights_choice(cls, weights: str) -> str:
        # Anything else is taken as a weights file path, checked when the backbone is built.
        if weights.lower() in WEIGHT_CHOICES:
            return weights.lower()
        if not weights.endswith((".h5", ".keras", ".weights.h5")):
            raise ValueError(
                f"must be one of {', '.join(WEIGHT_CHOICES)} or a .h5 / .keras weights file path"
            )
        return weights


class EvaluateParams(Section):
    """Evaluation on the test split."""

    misclassified_grid: int = Field(
        ge=0, description="the most confidently misclassified test images drawn"
    )
    bootstrap_samples: int = Field(
        ge=0,
        le=100_000,
        description="test-set resamples for the 95% confidence intervals (seeded by seed); "
        "0 = none",
    )
    calibration_bins: int = Field(
        ge=2,
        le=100,
        description="equal-width confidence bins of the ECE and the reliability diagram",
    )
    gradcam_images: int = Field(
        ge=0,
        le=16,
        description="Grad-CAM: up to this many correct and wrong test images per class "
        "explained; 0 = off",
    )
    tta: bool = Field(
        description="test-time augmentation: test probabilities are the mean over the image, "
        "its left-right mirror and shifts of 1/16 of the side left, right, up and down (about "
        "6x slower); predict and the served model do not use it"
    )
    # Default argmax, so a params.yaml from before the decision param still loads.
    decision: Literal["argmax", "val_macro_f1", "val_covid_sensitivity"] = Field(
        default="argmax",
        description="how a test image is called covid: argmax = its most probable class; "
        "val_macro_f1 = a weight on the covid probability fit on the validation split for its "
        "best macro F1; val_covid_sensitivity = the smallest such weight reaching "
        "target_sensitivity there (for two classes: a moved threshold); predict and the served "
        "model use argmax",
    )
    target_sensitivity: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="the validation covid sensitivity decision: val_covid_sensitivity reaches",
    )
    # Defaults to none, so a params.yaml from before external validation still loads.
    external: dict[str, ExternalDataParams] = Field(
        default_factory=dict,
        description="external datasets, each ingested, decoded and scored by its own stage "
        "external@<name>, e.g. {site_b: {source: ~/site-b-xrays, label_map: {Pneumonia: "
        "viral_pneumonia}}}; options left out take the data defaults of params.yaml (not the "
        "training data's values)",
        json_schema_extra={
            "allowed": "mapping of name (letters, digits, _ and -) to {source: ..., any data "
            "option}"
        },
    )

    @field_validator("external", mode="before")
    @classmethod
    def _safe_names(cls, external: Any) -> Any:
        for name in external if isinstance(external, dict) else ():
            if not isinstance(name, str) or not re.fullmatch(EXTERNAL_NAME_PATTERN, name):
                raise ValueError(
                    f"dataset name {name!r}: use letters, digits, '_' and '-' (up to 64, "
                    "starting with a letter or digit); it names a DVC stage, a folder and "
                    "MLflow metrics"
                )
        return external


class CompareParams(Section):
    """The leaderboard across models, and the registry's champion."""

    rank_by: str = Field(
        description="the leaderboard's order, which the champion follows: a test metric, "
        "external_<name>_<metric> of an evaluate.external dataset, or cv_<test metric> pooled "
        "over every fold of the cross-validation design (split.folds > 0)",
        json_schema_extra={
            "allowed": f"one of {', '.join(RANK_METRICS + POOLED_RANK_METRICS)}, or "
            f"external_<name>_<metric> with <metric> one of {', '.join(EXTERNAL_RANK_METRICS)}"
        },
    )
    significance: float = Field(
        gt=0.0,
        lt=1.0,
        description="McNemar p-value against the best model below this = significant difference",
    )
    registered_model: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="MLflow registry name; its champion alias follows the best model",
    )
    ensemble_size: int = Field(
        ge=0,
        description="ensemble row: mean probabilities of the top N models, scored on their "
        "shared test images with evaluate's bootstrap settings; 0 = none, else >= 2",
    )

    @field_validator("rank_by")
    @classmethod
    def _rankable(cls, rank_by: str) -> str:
        # Which external names exist is checked with evaluate.external, in Params.
        external = rf"external_{EXTERNAL_NAME_PATTERN}_({'|'.join(EXTERNAL_RANK_METRICS)})"
        known = RANK_METRICS + POOLED_RANK_METRICS
        if rank_by not in known and not re.fullmatch(external, rank_by):
            raise ValueError(
                f"must be one of {', '.join(known)}, or external_<name>_<metric> with "
                f"<metric> one of {', '.join(EXTERNAL_RANK_METRICS)}"
            )
        return rank_by

    # Defaults to none, so a params.yaml from before recipes still loads.
    by: list[str] = Field(
        default_factory=list,
        description="params that tell recipes of one model apart: each leaderboard row (and "
        "pooled row) is a model with these params' values as train logged them, the newest run "
        "of each, e.g. [train.members] ranks compact_cnn[train.members=1] beside "
        "compact_cnn[train.members=3]; [] = one row per model",
        json_schema_extra={"allowed": "a list of train.<key> and pretrain.<key> params"},
    )

    @field_validator("ensemble_size")
    @classmethod
    def _ensemble_of_two_or_more(cls, size: int) -> int:
        if size == 1:
            raise ValueError("an ensemble needs at least 2 models; use 0 for no ensemble row")
        return size

    @field_validator("by")
    @classmethod
    def _train_time_params(cls, by: list[str]) -> list[str]:
        # Only what train logs and its model depends on: evaluate's params change no run's
        # model (a run re-evaluated holds its latest scores), the split's change the data.
        known = section_keys(TrainParams, "train.") | section_keys(PretrainParams, "pretrain.")
        for key in by:
            if key not in known:
                raise ValueError(
                    f"{key!r} is not a train.<key> or pretrain.<key> param (e.g. train.members, "
                    "train.image_size, pretrain.enabled)"
                )
        if len(set(by)) < len(by):
            raise ValueError("names a param twice")
        return by


def section_keys(section: type[BaseModel], prefix: str) -> set[str]:
    """The dotted keys (train.augment.zoom) of a params section's leaves, after `prefix`."""
    keys: set[str] = set()
    for name, field in section.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, Section):
            keys |= section_keys(nested, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


class Params(Section):
    """All of params.yaml."""

    seed: int = Field(
        description="split shuffling, weight initialisation, augmentation, dropout, bootstrap"
    )
    model: str = Field(
        description="the model train fits: a backbone or a baseline named in "
        "cxr/core/registry.py (README, Models)",
        json_schema_extra={
            "allowed": "a backbone or baseline of cxr/core/registry.py, or wrn_<depth>_<k>"
        },
    )
    mlflow_experiment: str = Field(min_length=1, description="the MLflow experiment's name")
    data: DataParams = Field(description="ingest: where the images come from, and their labels")
    build: BuildParams = Field(
        description="build: every image decoded once into the pixel cache; exploration plots"
    )
    split: SplitParams = Field(description="split: leakage-safe train / val / test")
    pretrain: PretrainParams = Field(
        description="pretrain: the backbone pre-trained on unlabelled images (off by default)"
    )
    train: TrainParams = Field(description="train: one model fitted on the train split")
    evaluate: EvaluateParams = Field(
        description="evaluate: the trained model scored on the test split, and on external "
        "datasets (external@<name>)"
    )
    compare: CompareParams = Field(
        description="compare: the leaderboard across the MLflow runs, and the registry's champion"
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        # Any wrn_<depth>_<k> with a valid depth is a backbone too, beyond the names listed.
        problem = model_problem(model)
        if problem is not None:
            raise ValueError(problem)
        return model

    @model_validator(mode="after")
    def _rank_by_a_known_dataset(self) -> Params:
        rank_by = self.compare.rank_by
        if rank_by in POOLED_RANK_METRICS and not self.split.folds:
            raise CrossKeyError(
                "compare.rank_by",
                rank_by,
                "pools the folds of a cross-validation, and split.folds = 0 is one split; "
                "sweep the folds (dvc exp run --queue -S split.folds=5 -S "
                f"'split.fold=range(0,5)') or rank by {rank_by.removeprefix(POOLED_PREFIX)}",
            )
        if rank_by in RANK_METRICS + POOLED_RANK_METRICS:
            return self
        names = sorted(self.evaluate.external)
        if not any(
            rank_by == external_metric(name, metric)
            for name in names
            for metric in EXTERNAL_RANK_METRICS
        ):
            known = f"evaluate.external holds {', '.join(names)}" if names else "it is empty"
            raise CrossKeyError(
                "compare.rank_by", rank_by, f"names no evaluate.external dataset ({known})"
            )
        return self

    @model_validator(mode="after")
    def _sizes_fit(self) -> Params:
        # Checked here, not when train starts, so a bad combination stops `dvc repro` before
        # ingest and build spend minutes on the data.
        image_size = self.train.baseline.image_size if is_baseline(self.model) else None
        key = "train.baseline.image_size" if image_size is not None else "train.image_size"
        image_size = image_size or self.train.image_size
        if image_size > self.build.cache_size:
            raise CrossKeyError(
                key,
                image_size,
                f"larger than build.cache_size = {self.build.cache_size}; raise "
                f"build.cache_size to at least {image_size} or lower {key}",
            )
        if is_baseline(self.model):
            return self
        problem = image_size_problem(self.model, self.train.image_size)
        if problem is not None:
            raise CrossKeyError("train.image_size", self.train.image_size, problem)
        if self.train.head.googlenet_aux:
            problem = googlenet_aux_problem(self.model, self.train.image_size)
            if problem is not None:
                raise CrossKeyError("train.head.googlenet_aux", True, problem)
        return self

    @model_validator(mode="after")
    def _pretraining_initialises_the_backbone(self) -> Params:
        # Pre-trained weights and ImageNet (or a file's) cannot both start the backbone.
        weights = self.train.weights
        if (
            self.pretrain.enabled
            and not is_baseline(self.model)
            and weights not in ("auto", "none")
        ):
            raise CrossKeyError(
                "pretrain.enabled",
                True,
                f"train.weights = {weights!r} would start the backbone too; set train.weights "
                "to auto or none (train then starts from the pre-trained encoder), or "
                "pretrain.enabled to false",
            )
        return self


class CrossKeyError(ValueError):
    """A value that is valid alone but not with another key's value; names the key."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        super().__init__(f"{key} = {value!r}: {problem}")
        self.key = key


def _one_line(error: ValidationError, source: Path) -> str:
    """Describe the first validation error as `file: key = value: what is allowed`."""
    first = error.errors()[0]
    cross_key = (first.get("ctx") or {}).get("error")
    if isinstance(cross_key, CrossKeyError):
        return f"{source}: {cross_key}"
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key; remove it or check its spelling"
    if first["type"] == "missing":
        return f"{source}: {key}: missing; add it to {source.name}"
    return f"{source}: {key} = {first.get('input')!r}: {message}"


def parse_params(raw: Any, source: Path = Path("params.yaml")) -> Params:
    """Validate an already-loaded params mapping."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: must be a YAML mapping of sections, got {type(raw).__name__}")
    for key, setting in MOVED_TO_ENVIRONMENT.items():
        section, _, name = key.partition(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            raise ParamsError(
                f"{source}: {key}: moved to the environment variable "
                f"{environment_variable(setting)} (see docs/params.md); remove it here"
            )
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_one_line(error, source)) from None


def load_params(path: Path) -> Params:
    """Read and validate params.yaml; any problem raises ParamsError naming the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the repository root") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return parse_params(raw, path)


def flatten_params(params: Params) -> dict[str, Any]:
    """Flatten params into dotted keys (train.head.dropout) for MLflow."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value

    walk("", params.model_dump())
    return flat


# Run settings: how fast or where a stage runs, never what it writes. As DVC params they
# re-ran stages whose outputs could not change (a new core count re-decoded every image), so
# they are environment variables, validated where a stage reads them.
RUN_SETTINGS_PREFIX = "CXR_"


class RunSettings(BaseModel):
    """The environment variables CXR_<FIELD>: how fast or where a stage runs, not what it writes.

    Same params, same outputs, whatever these say; so they are not DVC params, and changing one
    re-runs no stage.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(
        default=0,
        ge=0,
        description="processes decoding images in build and external@<name> (the same pixels "
        "for any number), and under KERAS_BACKEND=jax the threads reading streamed training "
        "batches ahead (the same batches); 0 = every available core",
    )
    memory_cache_mb: float = Field(
        default=128.0,
        ge=0.0,
        description="train holds the resized train and val pixels in memory when they take at "
        "most this many MB (images x train.image_size^2 bytes); above it they are streamed, each "
        "batch read from the pixel cache and resized as training goes, so memory does not grow "
        "with the number of images (same batches, same order, same result; "
        "benchmarks/input_memory.py); baselines always hold theirs",
    )
    resume: bool = Field(
        default=False,
        description="on: train continues an interrupted run from its last finished epoch in "
        ".train_backup/, in the same MLflow run (same params and data; with train.mixup the "
        "blends start again, so the weights are close to, not bit-identical with, an "
        "uninterrupted run's); off: start afresh",
        json_schema_extra={"allowed": "1, true or yes (on); 0, false or no (off)"},
    )
    inference_batch_size: int = Field(
        default=64,
        ge=1,
        description="images per prediction batch in evaluate and external@<name> (the "
        "predictions do not depend on it)",
    )
    coordinator_address: str = Field(
        default="",
        description="train one model in several processes (KERAS_BACKEND=jax, each host runs "
        "the same train command): host:port where process 0 listens, the same for every "
        "process (docs/scaling.md#scaling-out); empty: one process",
        json_schema_extra={"allowed": "host:port, e.g. 10.0.0.1:8476"},
    )
    num_processes: int = Field(
        default=1,
        ge=1,
        description="processes training one model together (with CXR_COORDINATOR_ADDRESS); "
        "every device of every process trains on its share of each batch",
    )
    process_id: int = Field(
        default=0,
        ge=0,
        description="this process's rank, 0 .. CXR_NUM_PROCESSES - 1, a different one on each "
        "host; process 0 alone writes models/, the metrics and the MLflow run",
    )

    @field_validator("resume", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # Only the words the docs list: pydantic alone would take on, t, y and more.
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError("not a switch")
        return word in ("1", "true", "yes")


# The params that became run settings: a params.yaml still holding one fails, naming the variable.
MOVED_TO_ENVIRONMENT = {
    "build.workers": "workers",
    "train.memory_cache_mb": "memory_cache_mb",
    "train.resume": "resume",
    "evaluate.batch_size": "inference_batch_size",
}


def environment_variable(setting: str) -> str:
    """The environment variable of a RunSettings field: CXR_ and its name in capitals."""
    return RUN_SETTINGS_PREFIX + setting.upper()


def run_settings(environ: Mapping[str, str]) -> RunSettings:
    """The run settings `environ` sets (unset or blank: the default); one line if one is bad."""
    given = {
        name: environ[variable].strip()
        for name in RunSettings.model_fields
        if (variable := environment_variable(name)) in environ and environ[variable].strip()
    }
    try:
        return RunSettings.model_validate(given)
    except ValidationError as error:
        name = str(error.errors()[0]["loc"][0])
        field = RunSettings.model_fields[name]
        raise PipelineError(
            f"{environment_variable(name)} = {given[name]!r}: allowed: {allowed_values(field)}; "
            f"unset: {shown_value(field.default)} (see docs/params.md)"
        ) from None


def shown_value(value: Any) -> str:
    """A value as the docs and errors write it: 128 and 0.5, not 128.0; off, not False."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _type_name(annotation: Any) -> str:
    """A field type in words: integer, number, text, list of integer, mapping of text to ..."""
    origin, arguments = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(choice) for choice in arguments)
    if origin is list:
        return f"list of {_type_name(arguments[0])}"
    if origin is dict:
        return f"mapping of {_type_name(arguments[0])} to {_type_name(arguments[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "the keys below"
    names = {bool: "true or false", int: "integer", float: "number", str: "text"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def allowed_values(field: FieldInfo) -> str:
    """What a field accepts, in words: its own `allowed` text, or its type and bounds."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "allowed" in extra:
        return str(extra["allowed"])
    bounds, words = [], [_type_name(field.annotation)]
    for constraint in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(constraint, kind):
                bounds.append(f"{sign} {shown_value(getattr(constraint, attribute))}")
        if isinstance(constraint, annotated_types.MinLen) and constraint.min_length == 1:
            words.append(", not empty")
        pattern = getattr(constraint, "pattern", None)
        if pattern:
            words.append(f" matching {pattern}")
    return " ".join([words[0], " and ".join(bounds)]).strip() + "".join(words[1:])
