"""A 3D image with its physical geometry, the one currency of the engine.

Axis order of `array` is (z, y, x), as numpy and SimpleITK's GetArrayFromImage give it.
Geometry follows ITK/DICOM conventions: `spacing` and `origin` in (x, y, z) order, mm, LPS;
`direction` is the 3x3 ITK direction matrix, row-major, 9 floats. Slicer's RAS is LPS with
x and y negated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in np.asarray(self.direction, dtype=float).ravel())

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array axis order (z, y, x), mm: what filters over `array` need."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume on the same grid (same shape required)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    def cropped(self, region: tuple) -> "Volume":
        """The part of the volume a (z, y, x) tuple of slices (step 1) cuts out, in the same place
        in space: its origin moves to the region's first voxel."""
        start = [s.indices(n)[0] for s, n in zip(region, self.shape)]
        origin = self.index_to_lps(np.array([start]))[0]
        return Volume(np.ascontiguousarray(self.array[region]), self.spacing, tuple(origin), self.direction)

    def same_grid(self, other: "Volume", tol: float = 1e-3) -> bool:
        """True when both volumes have the same shape and voxel-to-physical mapping."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def index_to_lps(self, zyx: np.ndarray) -> np.ndarray:
        """Continuous (z, y, x) indices, shape (N, 3) -> physical LPS points (N, 3), mm."""
        ijk = np.asarray(zyx, dtype=float)[:, ::-1]
        d = np.asarray(self.direction).reshape(3, 3)
        return (d @ (ijk * np.asarray(self.spacing)).T).T + np.asarray(self.origin)

    def index_to_ras(self, zyx: np.ndarray) -> np.ndarray:
        """Continuous (z, y, x) indices -> Slicer RAS points, mm."""
        lps = self.index_to_lps(zyx)
        return lps * np.array([-1.0, -1.0, 1.0])

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4x4 IJK (x, y, z index) -> RAS matrix, as Slicer's volume nodes store it."""
        d = np.asarray(self.direction).reshape(3, 3)
        m = np.eye(4)
        m[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ d @ np.diag(self.spacing)
        m[:3, 3] = np.asarray(self.origin) * np.array([-1.0, -1.0, 1.0])
        return m

    @classmethod
    def from_ijk_to_ras(cls, array: np.ndarray, ijk_to_ras: np.ndarray) -> "Volume":
        """Build from a Slicer-style 4x4 IJK->RAS matrix (as from vtkMRMLVolumeNode)."""
        m = np.asarray(ijk_to_ras, dtype=float)
        lps = np.diag([-1.0, -1.0, 1.0]) @ m[:3, :3]
        spacing = np.linalg.norm(lps, axis=0)
        direction = lps / spacing
        origin = m[:3, 3] * np.array([-1.0, -1.0, 1.0])
        return cls(array, tuple(spacing), tuple(origin), tuple(direction.ravel()))

    def to_sitk(self):
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image) -> "Volume":
        import SimpleITK as sitk

        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
