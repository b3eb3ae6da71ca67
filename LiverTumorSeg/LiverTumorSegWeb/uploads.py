"""Files a browser sends: written under a scratch folder by their own names; a DICOM series comes
as many files or as one .zip, and becomes a folder the Logic reads as a series."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from LiverTumorSegLib.errors import InputError

MAX_ZIP_BYTES = 8 * 1024**3  # unpacked; a CT series is far smaller


def safe_name(name: str) -> str:
    """The file name part of a name a browser sent (no folders, nothing hidden)."""
    base = PurePosixPath(str(name).replace("\\", "/")).name.strip()
    if not base or base in (".", ".."):
        raise InputError(f"cannot use the file name '{name}'; rename the file and upload it again")
    return base


def save_uploads(files: list[dict], folder: Path) -> Path:
    """Write uploaded files (trame ClientFile dicts: name, content) into `folder`; returns what
    the Logic should read: the one file, the unpacked folder of a .zip, or the folder of a series."""
    from trame.app.file_upload import ClientFile

    if not files:
        raise InputError("no file was uploaded; choose a CT file, a DICOM folder as .zip, or the series' files")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in files:
        client = ClientFile(entry)
        path = folder / safe_name(client.name)
        path.write_bytes(client.content)
        written.append(path)
    if len(written) == 1 and written[0].suffix.lower() == ".zip":
        return unzip_series(written[0], folder / "series")
    if len(written) == 1:
        return written[0]
    series = folder / "series"
    series.mkdir()
    for path in written:
        path.rename(series / path.name)
    return series


def unzip_series(archive: Path, folder: Path) -> Path:
    """Unpack a .zip (a DICOM series, or one image file) safely: no member may land outside
    `folder`; returns the folder holding the files (the innermost one when the zip has one folder)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.is_dir()]
            if not members:
                raise InputError(f"{archive.name} is an empty zip; zip the folder of the DICOM series")
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise InputError(f"{archive.name} unpacks to more than {MAX_ZIP_BYTES // 1024**3} GB; upload one series")
            root = folder.resolve()
            for member in members:
                target = (folder / member.filename).resolve()
                if root not in target.parents:
                    raise InputError(f"{archive.name} holds a path outside its folder ({member.filename}); zip the series folder itself")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(target, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
    except zipfile.BadZipFile:
        raise InputError(f"{archive.name} is not a readable zip file; zip the DICOM folder again") from None
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and "__MACOSX" not in p.parts]
    if len(files) == 1:
        return files[0]  # a zipped single image file
    parents = {p.parent for p in files}
    return parents.pop() if len(parents) == 1 else folder
