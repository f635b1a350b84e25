module ignite.dev/sdk

go 1.18
