"""energybench's built-in plugins, registered through the same entry points as third-party ones."""

if __name__ != "energybench.plugins":  # the checkout's plugins/ folder imported by its own name
    raise ImportError(f"import energybench.plugins, not {__name__}: plugins/ is installed as energybench.plugins "
                      "(pip install -e .)")
