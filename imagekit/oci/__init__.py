"""The OCI image layout on disk: media types, blobs, manifests, refs, gc and fsck."""
