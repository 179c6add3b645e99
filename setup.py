from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("gluon_rcnn/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)  # noqa: S102 - our own version line

setup(
    name="gluon_rcnn",
    version=version["__version__"],
    description="Faster/Mask/Cascade R-CNN (C4, FPN) in PyTorch with GluonCV's API; ClaRAN radio-galaxy detection",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gluon_rcnn", "gluon_rcnn.*"]) + ["gluon_rcnn.zoo_entries"],
    # the top-level model_zoo/ folder (one JSON per named entry) is installed inside the package
    package_dir={"gluon_rcnn.zoo_entries": "model_zoo"},
    package_data={"gluon_rcnn.zoo_entries": ["*.json", "*.md"],
                  # the RGZ consensus catalogue (ClaRAN's full_catalogue.csv, MIT) with its licence
                  "gluon_rcnn.radio": ["data/*.csv.gz", "data/*.md", "data/LICENSE.rgz_rcnn"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pycocotools>=2.0.7",
        "tqdm>=4.60",
        "google-crc32c>=1.5",  # gluon_rcnn.convert.tf_checkpoint: the crc32c of TF checkpoint data (C, Apache-2.0)
    ],
    extras_require={
        "test": ["pytest>=8", "setuptools>=64", "wheel"],
        "tensorboard": ["tensorboard>=2.14"],
        "export": ["onnx>=1.15"],
        # gluon_rcnn.radio (ClaRAN: FITS, WCS, labels, renderings, catalogues); the core never imports them
        "radio": ["astropy>=6.0", "reproject>=0.13", "scipy>=1.10", "firstgalaxydata>=0.2"],
    },
    scripts=[],
)
