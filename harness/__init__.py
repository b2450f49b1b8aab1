"""iommufd-harness: build a kernel, boot it behind a vIOMMU, run the iommufd selftests."""

__version__ = "0.1.0"
