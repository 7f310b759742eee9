from allocator.autoscale.cli import main

main()
