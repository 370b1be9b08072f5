from audiosocket_ai.cli import main

main()
