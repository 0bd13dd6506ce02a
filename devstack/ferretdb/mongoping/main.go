// Command mongoping is the devstack readiness probe for FerretDB: it connects
// with the official MongoDB Go driver and runs the "ping" command.
//
// Usage: mongoping [-uri mongodb://127.0.0.1:27017/] [-timeout 3s]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

func main() {
	uri := flag.String("uri", "mongodb://127.0.0.1:27017/", "MongoDB connection string")
	timeout := flag.Duration("timeout", 3*time.Second, "overall deadline")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	opts := options.Client().ApplyURI(*uri).SetServerSelectionTimeout(*timeout)
	client, err := mongo.Connect(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mongoping: connect:", err)
		os.Exit(1)
	}
	// No Disconnect: it would send endSessions, which FerretDB v1 does not
	// implement and logs as a warning on every probe. Exiting closes the socket.

	var res bson.M
	if err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Decode(&res); err != nil {
		fmt.Fprintln(os.Stderr, "mongoping: ping:", err)
		os.Exit(1)
	}
	fmt.Println("ok")
}
