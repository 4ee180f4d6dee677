module gpufleet.local/kindnode

go 1.22
