"use strict";
// A throwaway Gmail-like IMAP server for the integration tests (hoodiecrow-imap 2.1.0).
//
//   node gmail_server.js PORT [CERT KEY]
//
// Listens on 127.0.0.1:PORT (0 = any free port), implicit TLS when CERT and KEY are given,
// and prints "listening PORT" on stdout once it accepts connections. Account testuser/testpass,
// in-memory: every start is a fresh, empty mailbox. Started by tests/support/servers.py.

const fs = require("fs");
const hoodiecrow = require("hoodiecrow-imap");

// The parts of Gmail's X-GM-EXT-1 that the stock plugin lacks: the CAPABILITY entry,
// FETCH/SEARCH X-GM-THRID and SEARCH X-GM-LABELS. A thread's id is the X-GM-MSGID of its first
// message, found through the Message-ID, References and In-Reply-To of the stored messages.
function gmailThreads(server) {
    const threadOf = new Map(); // Message-ID -> X-GM-THRID
    server.registerCapability("X-GM-EXT-1");

    const header = (raw, name) => {
        const head = String(raw || "").split(/\r?\n\r?\n/, 1)[0].replace(/\r?\n[ \t]+/g, " ");
        const found = head.split(/\r?\n/).filter((line) => line.toLowerCase().startsWith(name + ":"));
        return found.map((line) => line.slice(name.length + 1)).join(" ");
    };
    const ids = (value) => value.match(/<[^<>\s]+>/g) || [];

    server.messageHandlers.push((connection, message) => {
        const own = ids(header(message.raw, "message-id"))[0];
        const related = [own, ...ids(header(message.raw, "references")),
            ...ids(header(message.raw, "in-reply-to"))].filter(Boolean);
        const known = related.find((id) => threadOf.has(id));
        message["X-GM-THRID"] = known ? threadOf.get(known) : message["X-GM-MSGID"];
        related.forEach((id) => threadOf.has(id) || threadOf.set(id, message["X-GM-THRID"]));
    });
    server.fetchHandlers["X-GM-THRID"] = (connection, message) =>
        ({ type: "ATOM", value: message["X-GM-THRID"] });
    server.searchHandlers["X-GM-THRID"] = (connection, message, index, thrid) =>
        message["X-GM-THRID"] === String(thrid);
    server.searchHandlers["X-GM-LABELS"] = (connection, message, index, label) =>
        (message["X-GM-LABELS"] || []).includes(String(label));
}

const port = Number(process.argv[2] || 0);
const [certFile, keyFile] = process.argv.slice(3, 5);
const options = {
    plugins: ["ID", "ENABLE", "CONDSTORE", "IDLE", "NAMESPACE", "UNSELECT", "SPECIAL-USE",
        "UIDPLUS", "MOVE", "X-GM-EXT-1", gmailThreads],
    id: { name: "hoodiecrow-gmail-emulation", version: "2.1.0" },
    storage: {
        INBOX: {},
        "": {
            separator: "/",
            folders: {
                "[Gmail]": {
                    flags: ["\\Noselect"],
                    folders: {
                        "All Mail": { "special-use": "\\All" },
                        Drafts: { "special-use": "\\Drafts" },
                        "Sent Mail": { "special-use": "\\Sent" },
                        Spam: { "special-use": "\\Junk" },
                        Trash: { "special-use": "\\Trash" },
                    },
                },
            },
        },
    },
};
if (certFile && keyFile) {
    options.secureConnection = true;
    options.credentials = { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) };
}

const server = hoodiecrow(options);
// hoodiecrow writes a response in pieces: without this, Nagle + delayed ACK cost ~40 ms a command.
server.server.on("connection", (socket) => socket.setNoDelay(true));
server.server.on("error", (err) => {
    console.error("gmail_server: " + err.message);
    process.exit(2);
});
server.listen(port, "127.0.0.1", () => {
    process.stdout.write("listening " + server.server.address().port + "\n");
});
for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => process.exit(0));
}
