"""What a run leaves behind and how it is judged.

    results   the records (``TestRecord``, ``RunRecord``), the verdict and the
              results directory written as the run goes
    junit     junit.xml
    kcidb     kcidb.json (KernelCI KCIDB I/O, validated with kcidb-io)
    markdown  summary.md, and re-rendering every report from results.json
    baseline  expectations and previous runs; the comparison that gates
    terminal  the summary and matrix tables printed at the end of a run
    repro     the one place a reproducer command line is rendered
    decode    symbolised call traces of kernel reports (decode_stacktrace.sh)
"""
