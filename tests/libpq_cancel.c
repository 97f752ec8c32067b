/*
 * Drives libpq 17's encrypted cancel for tests/pg_tls.rs: connect with the connection string
 * in argv[1], send argv[2], then cancel it with PQcancelCreate + PQcancelBlocking (the API
 * psycopg 3.2 and PostgreSQL 17's postgres_fdw use; it sends the CancelRequest over the same
 * kind of TLS as the connection, where the old PQcancel sends it in the clear). Prints
 * "libpq <version>", "ssl <0|1>", then "<SQLSTATE> <message>" for each error result.
 *
 * The declarations are written out because the system's libpq-fe.h is PostgreSQL 15's, which
 * has no PGcancelConn; they match libpq-fe.h of PostgreSQL 17.
 */
#include <stdio.h>
#include <unistd.h>

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;
typedef struct pg_cancel_conn PGcancelConn;

extern PGconn *PQconnectdb(const char *conninfo);
extern int PQstatus(const PGconn *conn);
extern char *PQerrorMessage(const PGconn *conn);
extern int PQsslInUse(PGconn *conn);
extern int PQlibVersion(void);
extern int PQsendQuery(PGconn *conn, const char *query);
extern PGresult *PQgetResult(PGconn *conn);
extern char *PQresultErrorField(const PGresult *res, int fieldcode);
extern void PQclear(PGresult *res);
extern void PQfinish(PGconn *conn);
extern PGcancelConn *PQcancelCreate(PGconn *conn);
extern int PQcancelBlocking(PGcancelConn *cancelConn);
extern char *PQcancelErrorMessage(const PGcancelConn *cancelConn);
extern void PQcancelFinish(PGcancelConn *cancelConn);

#define CONNECTION_OK 0
#define PG_DIAG_SQLSTATE 'C'
#define PG_DIAG_MESSAGE_PRIMARY 'M'

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s CONNINFO QUERY\n", argv[0]);
        return 2;
    }
    printf("libpq %d\n", PQlibVersion());
    PGconn *conn = PQconnectdb(argv[1]);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(conn));
        return 1;
    }
    printf("ssl %d\n", PQsslInUse(conn));
    fflush(stdout);
    if (!PQsendQuery(conn, argv[2])) {
        fprintf(stderr, "send: %s", PQerrorMessage(conn));
        return 1;
    }
    /* Let the query reach the server and start running. */
    sleep(2);
    PGcancelConn *cancel = PQcancelCreate(conn);
    if (!PQcancelBlocking(cancel)) {
        fprintf(stderr, "cancel: %s", PQcancelErrorMessage(cancel));
        return 1;
    }
    PQcancelFinish(cancel);
    PGresult *res;
    while ((res = PQgetResult(conn)) != NULL) {
        char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (code)
            printf("%s %s\n", code, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
        PQclear(res);
    }
    PQfinish(conn);
    return 0;
}
