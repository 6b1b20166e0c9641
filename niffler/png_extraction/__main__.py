from niffler.png_extraction.cli import main

main()
