-- How far submit times stray from id order: `max_lateness` is the largest amount by which a task
-- was submitted before a task with a smaller id (0 while times follow ids, as they do when tasks
-- are submitted live). Every task with an id at or above a task T was then submitted at or after
-- T's submit time minus `max_lateness`, which lets a time range's page read only the newest part
-- of the range (see mj-tasks/src/store/sql.rs). Kept by every insert, in its transaction.
-- SQLite only: its writers are serialized, so ids follow commit order.
CREATE TABLE mj_task_order (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    min_submit_time INTEGER,
    max_submit_time INTEGER,
    max_lateness    INTEGER NOT NULL
);
INSERT INTO mj_task_order (id, min_submit_time, max_submit_time, max_lateness)
SELECT 1,
       (SELECT MIN(submit_time) FROM midjourneys),
       (SELECT MAX(submit_time) FROM midjourneys),
       MAX(0, COALESCE((
           SELECT MAX(earlier - submit_time) FROM (
               SELECT submit_time, MAX(submit_time) OVER (
                   ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
               ) AS earlier
               FROM midjourneys
           )
       ), 0));
