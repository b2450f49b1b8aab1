"""The build side of the pipeline, one module per stage, each with small
request/result dataclasses and no knowledge of the others:

    source   a pristine tree (Debian's linux-source or --kernel-src) and a
             working copy under <work>/trees/<key>/src kept in sync with rsync
    patches  the project's series and the user's, dry-run then applied
    config   base config + fragments -> .config, every requested value checked
    build    the kernel image, uapi headers and the static iommufd selftests
    image    the guest initramfs (Debian packages, selftests, per-run SSH keys);
             ``cpio`` writes the newc archives it is made of
"""
