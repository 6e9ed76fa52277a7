from llmwizard.wizard.cli import main

raise SystemExit(main())
