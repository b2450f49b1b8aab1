"""The gate on the mailing list: a series as b4 fetches it from a
public-inbox archive (or a local mbox), and the verdict as a reply in its
thread (``gate``)."""
