#!/usr/bin/env python3
"""An MCP client built on the official MCP Python SDK (`pip install mcp`),
driven line by line by the Rust integration tests.

    mcp_client.py stdio COMMAND [ARG...]   (environment: the server's, passed through)
    mcp_client.py http URL

It connects, runs `initialize`, prints one JSON line {"ready": true, ...}, then
reads JSON requests from stdin, one per line, and answers each with one line:

    {"op": "list_tools"}  -> {"tools": [{name, input_schema, annotations, description}],
                              "schema_errors": {name: error}}   (each input schema is
                              checked with jsonschema's meta-schema validator)
    {"op": "call", "name": "...", "arguments": {...}}
                          -> {"is_error": bool, "text": "...", "json": <text parsed, or null>}
    {"op": "quit"}        -> exits

Anything unexpected is printed as {"fatal": "..."} and the script exits 1.
"""

import asyncio
import json
import os
import sys

import jsonschema
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_line():
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def drive(session: ClientSession):
    init = await session.initialize()
    emit({
        "ready": True,
        "server": init.server_info.name,
        "protocol": init.protocol_version,
        "tools_capability": init.capabilities.tools is not None,
    })
    while True:
        line = await read_line()
        if not line:
            return
        req = json.loads(line)
        op = req.get("op")
        if op == "quit":
            return
        if op == "list_tools":
            result = await session.list_tools()
            tools, errors = [], {}
            for tool in result.tools:
                schema = tool.input_schema
                try:
                    jsonschema.validators.validator_for(schema).check_schema(schema)
                except jsonschema.exceptions.SchemaError as e:
                    errors[tool.name] = str(e).splitlines()[0]
                ann = tool.annotations.model_dump() if tool.annotations else None
                tools.append({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": schema,
                    "annotations": ann,
                })
            emit({"tools": tools, "schema_errors": errors})
        elif op == "validate":
            # Validate arguments against a tool's input schema (client-side check).
            result = await session.list_tools()
            schema = next(t.input_schema for t in result.tools if t.name == req["name"])
            try:
                jsonschema.validate(req["arguments"], schema)
                emit({"valid": True})
            except jsonschema.exceptions.ValidationError as e:
                emit({"valid": False, "error": e.message})
        elif op == "call":
            result = await session.call_tool(req["name"], req.get("arguments") or {})
            text = "".join(getattr(c, "text", "") for c in result.content)
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            emit({"is_error": bool(result.is_error), "text": text, "json": parsed})
        else:
            emit({"fatal": f"unknown op {op!r}"})
            sys.exit(1)


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        env = {k: v for k, v in os.environ.items() if k.startswith("AGENTKEYS_") or k in ("HOME", "PATH")}
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:], env=env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await drive(session)
    elif mode == "http":
        async with streamable_http_client(sys.argv[2]) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await drive(session)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except SystemExit:
        raise
    except BaseException as e:  # report, do not hang the Rust side
        emit({"fatal": f"{type(e).__name__}: {e}"})
        sys.exit(1)
