from hsi_cluster.cli import main

main()
