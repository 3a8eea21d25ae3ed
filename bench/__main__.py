"""Entry point: ``python -m bench [serving|audit|workers] [options]`` (``serving`` when no benchmark is named)."""

import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "audit":
        from bench.audit import main as audit_main

        audit_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "workers":
        from bench.workers import main as workers_main

        workers_main(sys.argv[2:])
    else:
        if len(sys.argv) > 1 and sys.argv[1] == "serving":
            del sys.argv[1]
        from bench.serving import main

        main()
