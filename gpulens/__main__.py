from gpulens.cli import main

if __name__ == "__main__":  # not when a worker process (spawn) imports this module as its parent's main
    raise SystemExit(main())
