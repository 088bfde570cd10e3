from whisper_sv.cli.main import main

raise SystemExit(main())
