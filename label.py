"""Label synthesised samples good / bad in a browser.

``python label.py --shards ... --kind mask --out labels.jsonl``
"""

import argparse
import logging

from layergen.labelling import LabellingSession, make_server

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--shards", nargs="+", required=True, help="layered shards (paths or brace patterns)"
    )
    parser.add_argument("--kind", choices=["mask", "inpaint"], required=True)
    parser.add_argument("--out", required=True, help="labels file (JSONL), appended to")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    session = LabellingSession(args.shards, args.kind, args.out, val_fraction=args.val_fraction)
    server = make_server(session, args.host, args.port)
    print(f"labelling {args.kind} at http://{args.host}:{server.server_port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
