"""Kconfig: fragments and .config files, and kconfiglib's view of a tree.

    fragments  reading and writing fragments and .config files
    model      loading a tree into kconfiglib (with the toolchain's variables)
    explain    why a symbol has its value, and the lines that would change it
    planner    the search for those lines, checked by re-evaluating
    symbols    small helpers on kconfiglib symbols and expressions both use
    compat     what kconfiglib 14.1 needs to parse Linux >= 5.13 and >= 6.18
"""
