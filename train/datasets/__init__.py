"""Datasets: readers for images, clips and DICOM, dataset indexes (class folders, CSV
manifests), phantom task sets, and ``ArraySet``, the preprocessed form every model trains on."""
