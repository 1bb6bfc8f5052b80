// Benthos 4.27 (MIT, the last release as github.com/benthosdev/benthos/v4)
// with the components the benchmarks' peer pipelines use: Kafka in,
// protobuf decode, Bloblang, Redis scripts, SQL into Postgres.
package main

import (
	"context"

	_ "github.com/benthosdev/benthos/v4/public/components/io"
	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/prometheus"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	_ "github.com/benthosdev/benthos/v4/public/components/pure/extended"
	_ "github.com/benthosdev/benthos/v4/public/components/redis"
	_ "github.com/benthosdev/benthos/v4/public/components/sql/base"
	"github.com/benthosdev/benthos/v4/public/service"
	_ "github.com/lib/pq"
)

func main() { service.RunCLI(context.Background()) }
