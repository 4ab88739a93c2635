from ecdc_stream.cli import main

raise SystemExit(main())
