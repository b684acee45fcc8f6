"""mlbseg: learning medical-image segmentation (and classification) from noisy labels with MLB-Seg / L2B.

Importing the package is cheap on purpose: heavy libraries (torch, SimpleITK, MONAI) are imported by the
modules that need them, so ``mlbseg --help`` answers at once.
"""

__version__ = "0.1.0"
