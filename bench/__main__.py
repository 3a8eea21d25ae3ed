"""Entry point: ``python -m bench [serving|...]``."""

from bench.serving import main

if __name__ == "__main__":
    main()
