from whisper_sv.cli import main

raise SystemExit(main())
