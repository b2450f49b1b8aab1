"""Where the selftests run, and the lifecycle that gets them there.

    base       the ``Target`` protocol the runner talks to, and ``Layout``
               (where the selftests and helper scripts are on the target)
    lifecycle  explicit states (off -> booted -> verified -> crashed ->
               rebooted -> off) and the transitions between them; every kind
               of target implements one ``Lifecycle``
    vm         a QEMU VM reached over SSH (``QemuTarget``, ``VmLifecycle``)
    qemu       one QEMU process: command line, QMP, KVM probe, teardown
    board      a real board over SSH, its kernel log over /dev/kmsg
    console    following a growing console.log: panics, markers, kernel reports
    ssh        the paramiko client every target uses
    verify     the checks that a booted target is the one the run asked for
"""
