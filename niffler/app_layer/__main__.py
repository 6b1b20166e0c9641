from niffler.app_layer.cli import main

main()
