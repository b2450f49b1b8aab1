"""Running the selected selftests on a target, whatever kind it is.

    runner   one pass over a selection: run-tests on the target, TAP parsed as
             it streams, per-test limits, crashes, kernel reports attributed
    session  a whole suite on a target lifecycle: listing, selection, reboot
             after a crash, reruns of failed tests
"""
