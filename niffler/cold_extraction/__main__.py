from niffler.cold_extraction.cli import main

main()
